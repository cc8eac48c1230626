"""Checkpoints: one typed schema (`Checkpoint`), written atomically, read back with weights_only=True.

A checkpoint holds tensors and plain Python values only (no pickled classes), so loading one cannot
run code. `Checkpoint.to_dict()` is what goes to disk and `Checkpoint.from_dict()` reads it back;
training writes it and both resume and export read it through these fields, never by string key.
`last.pt` is everything needed to resume bit-for-bit; `best.pt` is the same at the best validation
loss so far.

Version history: 1 kept the loop's counters at the top level (no `best_step`, `init_from` or `run_id`);
2 groups them under `progress`. Both are read.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from lstmgen import faults
from lstmgen.errors import LstmgenError

CHECKPOINT_FORMAT = "lstmgen-checkpoint"
CHECKPOINT_VERSION = 2
LAST = "last.pt"
BEST = "best.pt"


@dataclass
class Progress:
    """Where the training loop stands: enough to continue exactly where it stopped."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # passes over the data started, minus one
    index: int = 0  # batch index within the epoch
    elapsed: float = 0.0  # seconds of training (validation included under a time budget)
    planned: int = 0  # steps the learning-rate schedule spans
    calibrated: bool = False  # a time-budget plan has been fitted to measured speed
    best_val: float = float("inf")  # nats/token
    last_val: float = float("inf")
    best_step: int = 0  # the step at which best_val was measured
    bad_evals: int = 0  # validations in a row without improvement


@dataclass
class Checkpoint:
    config: dict[str, Any]  # RunConfig.to_dict(), resolved
    tokenizer: dict[str, Any]  # Tokenizer.to_dict()
    model: dict[str, torch.Tensor]  # state_dict
    optimizer: dict[str, Any]  # AdamW state_dict
    torch_rng: torch.Tensor | list[torch.Tensor]  # one state, or one per data-parallel rank
    progress: Progress
    start_ids: list[int]  # what generation feeds before a prompt
    records: bool
    carry: tuple[torch.Tensor, torch.Tensor] | None = None  # running text: LSTM state carried between windows
    machine: str = ""  # where it was trained (provenance)
    corpus: str = ""  # the corpus file's name
    world_size: int = 1  # data-parallel processes that wrote it
    init_from: dict[str, Any] | None = None  # fine-tuning: the model it started from (see finetune.py)
    run_id: str = ""  # fixed when a run starts, kept on resume: tells this run's exports from others'

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["progress"] = asdict(self.progress)
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "checkpoint") -> "Checkpoint":
        if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
            raise LstmgenError(f"{source} is not an lstmgen checkpoint")
        version = d.get("version", 0)
        if version > CHECKPOINT_VERSION:
            raise LstmgenError(f"{source} was written by a newer lstmgen (checkpoint version {version}); upgrade")
        counters = {f.name for f in fields(Progress)}
        flat = d if version < 2 else d.get("progress", {})
        progress = Progress(**{k: v for k, v in flat.items() if k in counters})
        known = {f.name for f in fields(cls)} - {"progress"}
        try:
            return cls(progress=progress, **{k: v for k, v in d.items() if k in known})
        except TypeError as e:  # a required field is missing
            raise LstmgenError(f"{source} is incomplete ({e}); it is not a checkpoint this lstmgen can read") from None


def save_atomically(ckpt: Checkpoint, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        faults.pause("checkpoint-write")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files left by a write that was killed (they are never read)."""
    n = 0
    for p in Path(folder).glob(".*.pt.*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def load(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise LstmgenError(f"no checkpoint at {path} (train first, or point at a run folder that has one)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or foreign files fail in many ways inside torch
        raise LstmgenError(f"checkpoint {path} cannot be read ({type(e).__name__}); it is corrupt or not an"
                           " lstmgen checkpoint") from None
    return Checkpoint.from_dict(raw, str(path))


def find(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint of a run folder: best.pt (falling back to last.pt) or last.pt."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LstmgenError(f"run folder not found: {run_dir} (train with `lstmgen train ... --out {run_dir}`)")
    names = [BEST, LAST] if which == "best" else [LAST]
    for name in names:
        if (run_dir / name).is_file():
            return run_dir / name
    raise LstmgenError(f"{run_dir} holds no checkpoint ({' or '.join(names)}); train it first")
