"""`lstmgen train` and `lstmgen export`: argument parsing for the trainer, then train.py / export.py."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from lstmgen.errors import LstmgenError

from .config import RunConfig, apply_overrides, level_defaults, load_recipe

# flag -> (section, field); every flag defaults to None so that only what the user typed overrides.
_FLAGS: dict[str, tuple[str, str, Any, str]] = {
    "--level": ("data", "level", str, "token level: char or word"),
    "--min-count": ("data", "min_count", int, "word level: words seen fewer times become <unk>"),
    "--column": ("data", "column", str, "CSV records: column index or header name"),
    "--embed-dim": ("model", "embed_dim", int, "embedding width"),
    "--hidden-size": ("model", "hidden_size", int, "LSTM width"),
    "--num-layers": ("model", "num_layers", int, "stacked LSTM layers"),
    "--dropout": ("model", "dropout", float, "dropout probability in [0, 1)"),
    "--weight-drop": ("model", "weight_drop", float,
                      "DropConnect probability on the LSTM's hidden-to-hidden weights while training, in [0, 1)"),
    "--batch-size": ("train", "batch_size", int, "sequences per step"),
    "--seq-len": ("train", "seq_len", int, "running text: tokens per truncated-BPTT window"),
    "--lr": ("train", "lr", float, "peak learning rate (AdamW)"),
    "--warmup-steps": ("train", "warmup_steps", int, "linear warm-up steps"),
    "--weight-decay": ("train", "weight_decay", float, "AdamW weight decay"),
    "--clip": ("train", "clip", float, "gradient-norm clip"),
    "--epochs": ("train", "epochs", int, "stop after this many epochs"),
    "--max-steps": ("train", "max_steps", int, "stop after this many steps (0 = no limit)"),
    "--time-budget": ("train", "time_budget", float, "stop after this many seconds; the schedule fits it"),
    "--eval-every": ("train", "eval_every", int, "steps between validations and checkpoints"),
    "--patience": ("train", "patience", int, "early stop after this many validations without improvement (0 = off)"),
    "--seed": ("train", "seed", int, "seed for weights, dropout and batch order"),
    "--device": ("train", "device", str, "auto, cpu or cuda"),
    "--threads": ("train", "threads", int, "torch CPU threads (0 = default)"),
    "--sample-every": ("train", "sample_every", int, "print samples every N steps (0 = never)"),
    "--sample-size": ("train", "sample_size", int, "how many samples then"),
}


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstmgen train", description="Train an LSTM language model on a corpus.",
                                epilog="Precedence: built-in defaults < --config recipe < flags.")
    p.add_argument("corpus", nargs="?", help="text file (running text) or TXT/CSV records file")
    p.add_argument("--config", help="TOML recipe with [data], [model] and [train] tables")
    p.add_argument("--records", action="store_true", default=None,
                   help="one item a line, each generated on its own (default for .csv files)")
    p.add_argument("--out", help="run folder for checkpoints and logs (default runs/<corpus name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine (launches torchrun; gloo on CPU, NCCL on CUDA)")
    p.add_argument("--tie-weights", action="store_true", default=None, help="share embedding and output weights")
    p.add_argument("--keep-case", action="store_true", help="word level: do not lowercase")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    for flag, (_, _, typ, text) in _FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=text)
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstmgen export", description="Export a trained run to an ONNX artifact folder.")
    p.add_argument("run", help="run folder written by lstmgen train")
    p.add_argument("--out", required=True, help="artifact folder to write (replaced atomically)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization (validation loss checked)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint to export")
    p.add_argument("--name", help="model name stored in the manifest (default: the folder name)")
    p.add_argument("--allow-int8-loss", action="store_true", help="export int8 even if it loses over 1%% validation loss")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def build_config(args: argparse.Namespace) -> RunConfig:
    recipe = load_recipe(args.config) if args.config else {}
    corpus = args.corpus or recipe.get("data", {}).get("corpus")
    if not corpus:
        raise LstmgenError("no corpus given: name a text file (or set data.corpus in the --config recipe)")
    if args.config and args.corpus is None and not os.path.isabs(corpus):
        corpus = str(Path(args.config).parent / corpus) if not os.path.exists(corpus) else corpus
    level = args.level or recipe.get("data", {}).get("level", "char")
    cfg = RunConfig()
    apply_overrides(cfg, level_defaults(level), "defaults")
    apply_overrides(cfg, recipe, f"config {args.config}")
    flags: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for flag, (section, name, _, _) in _FLAGS.items():
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is not None:
            flags[section][name] = v
    if args.records is not None:
        flags["data"]["records"] = True
    elif "records" not in recipe.get("data", {}) and corpus.lower().endswith(".csv"):
        flags["data"]["records"] = True
    if args.tie_weights is not None:
        flags["model"]["tie_weights"] = True
    if args.keep_case:
        flags["data"]["lowercase"] = False
    flags["data"]["corpus"] = corpus
    apply_overrides(cfg, flags, "flags")
    cfg.validate()
    return cfg


def main(argv: Sequence[str]) -> int:
    command, rest = argv[0], list(argv[1:])
    debug = "--debug" in rest
    try:
        if command == "train":
            return _train(rest)
        if command == "export":
            return _export(rest)
        raise LstmgenError(f"unknown command {command!r}")
    except LstmgenError as e:
        if debug:
            raise
        print(f"lstmgen: error: {e}", file=sys.stderr)
        return 2


def _train(argv: list[str]) -> int:
    from .train import train

    args = _train_parser().parse_args(argv)
    cfg = build_config(args)
    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        from .distributed import launch

        rest = [a for i, a in enumerate(argv) if a != "--nproc" and not (i > 0 and argv[i - 1] == "--nproc")
                and not a.startswith("--nproc=")]
        return launch(args.nproc, rest)
    out = args.out or os.path.join("runs", Path(cfg.data.corpus).stem)
    result = train(cfg, out, resume=args.resume, progress=not args.no_progress,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    return 130 if result.status == "interrupted" else 0


def _export(argv: list[str]) -> int:
    from .export import export

    args = _export_parser().parse_args(argv)
    export(args.run, args.out, int8=args.int8, which=args.checkpoint, name=args.name,
           allow_int8_loss=args.allow_int8_loss, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0
