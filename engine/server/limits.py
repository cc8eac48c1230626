"""The server's limits, declared once: `Limits` owns each limit's default, its CLI flag and its help.

`lstmgen serve`'s flags are derived from it (`add_cli_flags`, `from_args`), the app reads it
(request sizes, the caps of max_tokens, n/num and logprobs in the request schemas, prompt lengths, streams and
requests at once), and the connection guard reads it (connections, client timeout). This module
imports nothing beyond the standard library, so `lstmgen serve --help` works without the `serve`
extra installed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from ..errors import LstmgenError


def _limit(default, flag: str, help: str, *, kind=int, zero_is_off: bool = False):
    return field(default=default, metadata={"flag": flag, "help": help, "kind": kind, "zero_is_off": zero_is_off})


@dataclass
class Limits:
    max_body: int = _limit(1 << 20, "--max-body", "largest request body in bytes")
    max_tokens_limit: int = _limit(2000, "--max-tokens-limit", "largest max_tokens a request may ask for (per sample)")
    max_batch: int = _limit(256, "--max-batch", "rows in one model's step loop at once; also the largest n/num")
    max_streams: int = _limit(32, "--max-streams", "concurrent streaming responses; past it 429")
    max_requests: int = _limit(512, "--max-requests", "requests answered at once; past it 503")
    max_connections: int = _limit(4096, "--max-connections", "open connections; past it new ones get 503 and are closed")
    client_timeout: float = _limit(10.0, "--client-timeout", "seconds a client may take to send a request, or stay idle"
                                   " between requests", kind=float)
    max_prompt_tokens: int = _limit(8192, "--max-prompt-tokens", "tokens of one generation prompt (a long one is"
                                    " read beside the batch, but takes the cores while it is read)")
    max_inspect_tokens: int = _limit(20_000, "--max-inspect-tokens", "tokens of one /v1/inspect text (its states are"
                                     " held in memory)")
    prefix_cache_bytes: int = _limit(64 << 20, "--prefix-cache-bytes", "bytes of model states kept after reading"
                                     " prompts, for every served model together (an LRU): a prompt read before, or one"
                                     " that begins with one, is not read again; 0 = off", zero_is_off=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            off = f.metadata["zero_is_off"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if off else value > 0):
                raise LstmgenError(f"{f.metadata['flag']} must be a number {'>= 0 (0 = off)' if off else '> 0'}, got {value!r}")

    @property
    def caps(self) -> dict[str, int]:
        """The options whose range this server narrows: {option name: its highest value here}, and the
        longest prompt a generation may have (prompt_tokens; see Generator.jobs)."""
        return {"max_tokens": self.max_tokens_limit, "num": self.max_batch, "prompt_tokens": self.max_prompt_tokens}


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per limit, its default shown."""
    for f in fields(Limits):
        parser.add_argument(f.metadata["flag"], dest=f.name, type=f.metadata["kind"], default=f.default,
                            help=f"{f.metadata['help']} (default %(default)s)")


def from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
