"""Checkpoints: plain state_dict files written atomically, read back with weights_only=True.

A checkpoint holds tensors and plain Python values only (no pickled classes), so loading one cannot
run code. `last.pt` is everything needed to resume bit-for-bit; `best.pt` is the same at the best
validation loss so far.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lstmgen import faults
from lstmgen.errors import LstmgenError

CHECKPOINT_FORMAT = "lstmgen-checkpoint"
CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


def save_atomically(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **obj}, f)
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


def load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LstmgenError(f"no checkpoint at {path} (train first, or point at a run folder that has one)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or foreign files fail in many ways inside torch
        raise LstmgenError(f"checkpoint {path} cannot be read ({type(e).__name__}); it is corrupt or not an"
                           " lstmgen checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LstmgenError(f"{path} is not an lstmgen checkpoint")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise LstmgenError(f"{path} was written by a newer lstmgen (checkpoint version {ckpt.get('version')}); upgrade")
    return ckpt


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
