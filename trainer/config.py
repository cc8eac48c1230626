"""Typed training configuration: what a run is made of, stored resolved in every checkpoint.

Values come from the dataclass defaults, then a recipe file (`--config recipe.toml`, sections
[model], [data] and [train]), then command-line flags; no code is executed to read a config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from lstmgen.errors import LstmgenError

DEFAULT_EPOCHS = 20
# What a resumed run must keep: they fix the model's shape or its vocabulary (section, field).
FIXED_ON_RESUME = {("data", "level"), ("data", "records"), ("data", "column"), ("data", "min_count"),
                   ("data", "lowercase"), ("model", "embed_dim"), ("model", "hidden_size"), ("model", "num_layers"),
                   ("model", "tie_weights")}


@dataclass
class DataConfig:
    corpus: str = ""  # path of the training corpus (TXT, or CSV for records)
    level: str = "char"  # "char" or "word" tokens
    records: bool = False  # one item a line, each its own sequence with an end marker
    column: str = "0"  # CSV records: column index or header name
    min_count: int = 1  # word level: rarer words become <unk>
    lowercase: bool = True  # word level: fold case
    val_sample_chars: int = 100_000  # validation during training reads this much of the split (0 = all of it)


@dataclass
class ModelConfig:
    vocab_size: int = 0  # filled in from the tokenizer
    embed_dim: int = 64  # token embedding width
    hidden_size: int = 256  # LSTM state width per layer
    num_layers: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # on embeddings, between LSTM layers and before the head
    weight_drop: float = 0.0  # training only: DropConnect on each layer's hidden-to-hidden weights (AWD-LSTM)
    tie_weights: bool = False  # share the embedding with the output head (needs embed_dim == hidden_size)


@dataclass
class TrainConfig:
    batch_size: int = 64  # sequences per step
    seq_len: int = 128  # running text: tokens per truncated-BPTT window
    lr: float = 3e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 50  # linear warm-up
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on biases, norms or embeddings)
    clip: float = 1.0  # gradient-norm clipping
    epochs: int = 0  # stop after this many passes over the data (0 = 20, or no limit under a time budget) ...
    max_steps: int = 0  # ... or this many optimizer steps (0 = no limit) ...
    time_budget: float = 0.0  # ... or this many seconds of training (0 = no limit), whichever first
    eval_every: int = 200  # steps between validations (and checkpoints)
    patience: int = 5  # early stop after this many validations without improvement (0 = never)
    eval_segments: int = 16  # running text: validation reads this many contiguous segments side by side
    seed: int = 1337  # weights, dropout and batch order
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch CPU threads (0 = torch's default)
    sample_every: int = 0  # print samples every N steps (0 = never)
    sample_size: int = 3  # how many samples then
    target: float = 0.0  # validation nats/token the run aims at, drawn on loss.png (0 = none)

    def epoch_limit(self) -> int:
        """Passes over the data that end the run (0 = none: a bare time budget trains for the budget)."""
        if self.epochs:
            return self.epochs
        return 0 if self.time_budget else DEFAULT_EPOCHS


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        cfg = cls()
        apply_overrides(cfg, d, source="checkpoint config")
        return cfg

    def validate(self) -> None:
        d, m, t = self.data, self.model, self.train

        def bad(msg: str) -> None:
            raise LstmgenError(msg)

        if d.level not in ("char", "word"):
            bad(f"--level must be 'char' or 'word', got {d.level!r}")
        if d.min_count < 1:
            bad(f"--min-count must be >= 1, got {d.min_count}")
        if d.val_sample_chars < 0:
            bad(f"--val-sample-chars must be >= 0 (0 = the whole validation split), got {d.val_sample_chars}")
        for name in ("embed_dim", "hidden_size", "num_layers"):
            v = getattr(m, name)
            if v < 1 or v > 8192:
                bad(f"--{name.replace('_', '-')} must be in [1, 8192], got {v}")
        if not (0 <= m.dropout < 1):
            bad(f"--dropout must be in [0, 1), got {m.dropout}")
        if not (0 <= m.weight_drop < 1):
            bad(f"--weight-drop must be in [0, 1), got {m.weight_drop}")
        if m.tie_weights and m.embed_dim != m.hidden_size:
            bad(f"--tie-weights needs --embed-dim == --hidden-size (got {m.embed_dim} and {m.hidden_size})")
        if t.batch_size < 1 or t.batch_size > 65536:
            bad(f"--batch-size must be in [1, 65536], got {t.batch_size}")
        if t.seq_len < 2 or t.seq_len > 100000:
            bad(f"--seq-len must be in [2, 100000], got {t.seq_len}")
        if not (0 < t.lr <= 1):
            bad(f"--lr must be in (0, 1], got {t.lr}")
        if not (0 <= t.min_lr_ratio <= 1):
            bad(f"min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
        if t.warmup_steps < 0 or t.weight_decay < 0 or t.clip <= 0:
            bad("--warmup-steps and --weight-decay must be >= 0 and --clip > 0")
        if t.epochs < 0:
            bad(f"--epochs must be >= 0 (0 = {DEFAULT_EPOCHS}, or no limit under a time budget), got {t.epochs}")
        if t.max_steps < 0:
            bad(f"--max-steps must be >= 0 (0 = no limit), got {t.max_steps}")
        if t.time_budget < 0:
            bad(f"--time-budget must be >= 0 seconds (0 = no limit), got {t.time_budget}")
        if t.eval_every < 1 or t.patience < 0 or t.eval_segments < 1:
            bad("--eval-every and eval_segments must be >= 1 and --patience >= 0")
        if t.device not in ("auto", "cpu", "cuda"):
            bad(f"--device must be auto, cpu or cuda, got {t.device!r}")
        if t.target < 0:
            bad(f"--target must be >= 0 nats/token (0 = none), got {t.target}")
        if t.threads < 0 or t.sample_every < 0 or t.sample_size < 1:
            bad("--threads and --sample-every must be >= 0 and --sample-size >= 1")

    def differences(self, other: "RunConfig") -> list[str]:
        """Every setting that differs from `other`, as 'section.field: other -> self'."""
        diffs = []
        for section in ("data", "model", "train"):
            a, b = getattr(self, section), getattr(other, section)
            for f in fields(a):
                if f.name != "vocab_size" and getattr(a, f.name) != getattr(b, f.name):
                    diffs.append(f"{section}.{f.name}: {getattr(b, f.name)!r} -> {getattr(a, f.name)!r}")
        return diffs

    def fixed_differences(self, other: "RunConfig") -> list[str]:
        """The differences a resumed run cannot take (FIXED_ON_RESUME)."""
        return [d for d in self.differences(other) if tuple(d.split(":")[0].split(".")) in FIXED_ON_RESUME]


# Settings that were renamed: recipes, config.json files and checkpoints written with the old name still load.
RENAMED = {("train", "eval_streams"): "eval_segments"}


def apply_overrides(cfg: RunConfig, values: dict[str, Any], source: str) -> None:
    """Set cfg.section.field from {'section': {'field': value}} with type checks."""
    for section, items in values.items():
        if section not in ("data", "model", "train"):
            raise LstmgenError(f"{source}: unknown section [{section}] (use [data], [model] or [train])")
        if not isinstance(items, dict):
            raise LstmgenError(f"{source}: [{section}] must be a table")
        target = getattr(cfg, section)
        known = {f.name: f for f in fields(target)}
        for key, value in items.items():
            key = RENAMED.get((section, key.replace("-", "_")), key.replace("-", "_"))
            if key not in known:
                raise LstmgenError(f"{source}: unknown setting {section}.{key} (known: {', '.join(known)})")
            current = getattr(target, key)
            if isinstance(current, bool):
                ok = isinstance(value, bool)
            elif isinstance(current, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(current, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, str)
                value = str(value) if isinstance(value, (str, int)) else value
                ok = isinstance(value, str)
            if not ok:
                raise LstmgenError(f"{source}: {section}.{key} must be a {type(current).__name__}, got {value!r}")
            setattr(target, key, value)


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LstmgenError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LstmgenError(f"config file {path} is not valid TOML ({e})") from None


def level_defaults(level: str) -> dict[str, dict[str, Any]]:
    """Sizes that suit each level when nothing else is said."""
    if level == "word":
        return {"model": {"embed_dim": 256, "hidden_size": 256, "num_layers": 2, "dropout": 0.3, "tie_weights": True},
                "train": {"batch_size": 32, "seq_len": 64, "lr": 2e-3}}
    return {}
