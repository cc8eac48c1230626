"""The served models: each one's Generator, its scheduler (one shared step loop) and its part of the
prefix-state cache, picking a model by name, and the server-wide counts of open streams and running
requests."""

from __future__ import annotations

from ..errors import LstmgenError
from ..generator import Generator
from ..prefix_cache import PrefixCache
from .http import HttpError
from .limits import Limits
from .scheduler import Scheduler


class Models:
    """The served models, one scheduler (one shared step loop) each, and the server-wide counters."""

    def __init__(self, models: dict[str, Generator], limits: Limits, default: str | None = None) -> None:
        if default is not None and default not in models:
            raise LstmgenError(f"--default-model {default!r} is not served (serving: {', '.join(models)})")
        self.generators = models
        self.limits = limits
        self.default = default or next(iter(models))  # a request that names no model gets this one
        # One LRU for every model; each model reads its prompts through its own view of it (None: off).
        self.prefix_cache = PrefixCache(limits.prefix_cache_bytes) if limits.prefix_cache_bytes else None
        self.caches = {name: self.prefix_cache.view(name, g.backend) if self.prefix_cache else None
                       for name, g in models.items()}
        self.schedulers = {name: Scheduler(g, limits.max_batch, self.caches[name]) for name, g in models.items()}
        self.open_streams = 0
        self.running_requests = 0

    def pick(self, name: str | None) -> str:
        """The served model a request names; none named: the default model (the first served, or
        --default-model), as clients that send no model (lm-evaluation-harness's gguf type) expect."""
        if name is None:
            return self.default
        if name not in self.generators:
            raise HttpError(404, f"no model named {name!r} here (serving: {', '.join(self.generators)})", param="model")
        return name

    def open_stream(self) -> None:
        if self.open_streams >= self.limits.max_streams:
            raise HttpError(429, f"over {self.limits.max_streams} concurrent streams; retry later", retry_after=1)
        self.open_streams += 1

    def close_stream(self) -> None:
        self.open_streams -= 1

    def close(self) -> None:
        for s in self.schedulers.values():
            s.close()
