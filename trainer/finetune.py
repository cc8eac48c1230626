"""Fine-tuning: where a run starts when it does not start from random weights (`--init-from MODEL`).

MODEL is a shipped model's name, an exported artifact folder (the weights are read back from
model.onnx's initializers, so fp32 artifacts only: int8 ones keep no float weights) or a run folder
(its best checkpoint). The new run inherits the model's shape and level, and its records/running-text
mode unless --records/--no-records says otherwise;
its vocabulary is the old one extended by what is new in the new corpus (`Tokenizer.extended`), the
old embedding and output rows are kept, a new token that is the case twin of an old one ('E' of 'e')
starts as its twin, and any other new row starts at the mean of the old ones (with the output bias of
the rarest old token), so a new token begins as a plausible, unlikely one.

The learning rate and warm-up fit the new corpus's size (`fit_to_data`): a few thousand records get a
gentler rate (0.4x for 20k tokens) that adapts the model without washing out what it knows, a corpus
of a million tokens or more the rate the model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstmgen.errors import LstmgenError
from lstmgen.generator import resolve_model
from lstmgen.manifest import MODEL_FILE, read_manifest
from lstmgen.tokenizer import Tokenizer

from . import checkpoint
from .config import RunConfig
from .model import LSTMLanguageModel

# Fine-tuning defaults: a fraction of the from-scratch learning rate and a short warm-up, so that the
# first steps on a new corpus do not wash out what the model knows.
FINETUNE_LR_SCALE = 0.3
FINETUNE_WARMUP_STEPS = 20
# fit_to_data: the full starting rate from this many new tokens on, never below MIN_SCALE of it.
FULL_RATE_TOKENS = 1_000_000
MIN_SCALE = 0.3


@dataclass
class StartingPoint:
    tokenizer: Tokenizer  # the starting model's vocabulary (the new run's is this, extended)
    weights: dict[str, np.ndarray]  # state_dict layout
    config: RunConfig  # the starting model's training config (shape, level, records)
    provenance: dict[str, Any]  # recorded in checkpoints and the manifest: where the run started

    @property
    def description(self) -> str:
        p = self.provenance
        return f"{p.get('name') or p.get('path')} ({p['kind']})"

    def load_into(self, model: LSTMLanguageModel, tokenizer: Tokenizer | None = None,
                  counts: np.ndarray | None = None) -> None:
        """Copy the weights into `model`, whose vocabulary (`tokenizer`, this one extended) may be
        larger: new rows at the end. A new token with a case twin in the old vocabulary ('E' for 'e')
        starts as that twin: its embedding and output rows, and the twin's output bias moved by how
        much rarer or commoner it is in the new corpus (`counts`, per token), so a names model that
        never saw a capital starts out writing 'E' where it would write 'e' at the start of a name
        once the first steps have shown where capitals go. Other new tokens start at the mean of the
        old rows with the output bias of the rarest old token: plausible, unlikely."""
        old = self.tokenizer.vocab_size
        twins = case_twins(self.tokenizer, tokenizer) if tokenizer is not None else {}
        state = model.state_dict()
        with torch.no_grad():
            for name, target in state.items():
                source = torch.tensor(np.asarray(self.weights[name], np.float32))
                if source.shape == target.shape:
                    target.copy_(source)
                    continue
                target[:old] = source  # embedding / head rows of the old vocabulary
                target[old:] = source.min() if name == "head.bias" else source.mean(dim=0)
                for new, twin in twins.items():
                    target[new] = source[twin] + (_log_ratio(counts, new, twin) if name == "head.bias" else 0.0)
        model.load_state_dict(state)


def case_twins(old: Tokenizer, new: Tokenizer) -> dict[int, int]:
    """New token id -> the old id of its case twin (the same token in another case), where one exists."""
    twins = {}
    for i in range(old.vocab_size, new.vocab_size):
        t = new.tokens[i]
        for other in (t.lower(), t.upper(), t.capitalize(), t.swapcase()):
            if other != t and other in old.index:
                twins[i] = old.index[other]
                break
    return twins


def _log_ratio(counts: np.ndarray | None, new: int, twin: int) -> float:
    """log(how often the new token occurs / how often its twin does) in the new corpus (0 if unknown)."""
    if counts is None or counts[new] <= 0 or counts[twin] <= 0:
        return 0.0
    return float(np.log(counts[new] / counts[twin]))


def load_starting_point(name_or_path: str) -> StartingPoint:
    """Read MODEL (run folder, artifact folder or shipped name) as a starting point."""
    path = Path(name_or_path)
    if path.is_dir() and ((path / checkpoint.LAST).is_file() or (path / checkpoint.BEST).is_file()):
        return _from_run(path)
    return _from_artifact(resolve_model(name_or_path), str(name_or_path))


def _from_run(run_dir: Path) -> StartingPoint:
    ckpt_path = checkpoint.find(run_dir, "best")
    ckpt = checkpoint.load(ckpt_path)
    weights = {k: v.float().numpy() for k, v in ckpt.model.items()}
    provenance = {"kind": "run", "path": str(run_dir.resolve()), "checkpoint": ckpt_path.name,
                  "step": ckpt.progress.step, "val_nats_per_token": ckpt.progress.best_val}
    return StartingPoint(Tokenizer.from_dict(ckpt.tokenizer), weights, RunConfig.from_dict(ckpt.config), provenance)


def _from_artifact(folder: Path, given: str) -> StartingPoint:
    import onnx

    from lstmgen.graphs.step import read_step_weights

    manifest = read_manifest(folder)
    if manifest.precision != "fp32":
        raise LstmgenError(f"{given} is an {manifest.precision} artifact, which keeps no float weights to fine-tune;"
                           " start from its fp32 twin (e.g. the name without -int8) or from a run folder")
    if "config" not in manifest.training:
        raise LstmgenError(f"{given}'s manifest records no training config; start from its run folder instead")
    weights, _ = read_step_weights(onnx.load(str(folder / MODEL_FILE)))
    cfg = RunConfig.from_dict(manifest.training["config"])
    provenance = {"kind": "artifact", "name": manifest.name or folder.name, "given": given,
                  "model_sha256": manifest.model_sha256, "val_nats_per_token": manifest.validation_nats}
    return StartingPoint(Tokenizer.from_dict(manifest.tokenizer), weights, cfg, provenance)


def finetune_defaults(start: StartingPoint) -> dict[str, dict[str, Any]]:
    """What a fine-tuning run inherits (shape, level, records, regularisation) and its own defaults."""
    old = start.config
    m, d = old.model, old.data
    return {"data": {"level": d.level, "records": d.records, "lowercase": d.lowercase, "min_count": d.min_count},
            "model": {"embed_dim": m.embed_dim, "hidden_size": m.hidden_size, "num_layers": m.num_layers,
                      "tie_weights": m.tie_weights, "dropout": m.dropout, "weight_drop": m.weight_drop},
            "train": {"lr": old.train.lr * FINETUNE_LR_SCALE, "warmup_steps": FINETUNE_WARMUP_STEPS}}


def fit_to_data(start: StartingPoint, train_tokens: int, steps_per_epoch: int) -> tuple[float, int]:
    """Learning rate and warm-up for fine-tuning on `train_tokens` new tokens: the starting model's rate
    scaled by (tokens / FULL_RATE_TOKENS) ** 0.25 within [MIN_SCALE, 1] (a small corpus is learnt in a
    few epochs, and a high rate then overwrites what the model knew with what it memorises), and a
    warm-up of a quarter epoch, 10 to 100 steps (the new rows' first gradients are large)."""
    scale = min(1.0, max(MIN_SCALE, (train_tokens / FULL_RATE_TOKENS) ** 0.25))
    return start.config.train.lr * scale, int(min(100, max(10, steps_per_epoch // 4)))


def check_shape(cfg: RunConfig, start: StartingPoint) -> None:
    """One line if the flags ask for a shape the starting model does not have."""
    a, b = cfg.model, start.config.model
    for name in ("embed_dim", "hidden_size", "num_layers", "tie_weights"):
        if getattr(a, name) != getattr(b, name):
            raise LstmgenError(f"--init-from {start.provenance.get('given') or start.provenance.get('path')} has"
                               f" {name} = {getattr(b, name)!r}; a fine-tuned model keeps its shape (drop that flag)")
    if cfg.data.level != start.config.data.level:
        raise LstmgenError(f"--init-from model is {start.config.data.level}-level; fine-tune it with --level"
                           f" {start.config.data.level}")
