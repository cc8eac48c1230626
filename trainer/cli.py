"""`lstmgen train` and `lstmgen export`: argument parsing for the trainer, then train.py / export.py.

Where a setting comes from, lowest first: built-in defaults (some differ by level), a fine-tuning
starting point (`--init-from`), the run's own config.json (`--resume`), a `--config` recipe, flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from lstmgen.cli import OneLineParser
from lstmgen.errors import LstmgenError

from .config import RunConfig, apply_overrides, level_defaults, load_recipe

# flag -> (section, field, type, help); every flag defaults to None so that only what the user typed
# overrides. The help gets the built-in default appended (and the word-level one where it differs).
FLAGS: dict[str, tuple[str, str, Any, str]] = {
    "--min-count": ("data", "min_count", int, "word level: words seen fewer times become <unk>"),
    "--column": ("data", "column", str, "CSV records: column index or header name"),
    "--val-sample-chars": ("data", "val_sample_chars", int, "validation during training scores this many characters"
                                                           " of the validation split (0 = all of it); export scores"
                                                           " the whole split"),
    "--embed-dim": ("model", "embed_dim", int, "embedding width"),
    "--hidden-size": ("model", "hidden_size", int, "LSTM width"),
    "--num-layers": ("model", "num_layers", int, "stacked LSTM layers"),
    "--dropout": ("model", "dropout", float, "dropout probability in [0, 1)"),
    "--weight-drop": ("model", "weight_drop", float,
                      "DropConnect probability on the LSTM's hidden-to-hidden weights while training, in [0, 1)"),
    "--batch-size": ("train", "batch_size", int, "sequences per step"),
    "--seq-len": ("train", "seq_len", int, "running text: tokens per truncated-BPTT window"),
    "--lr": ("train", "lr", float, "peak learning rate (AdamW); --init-from: the starting model's, scaled to the"
                                   " new corpus's size (tokens / 1M) ** 0.25, within [0.3, 1]"),
    "--warmup-steps": ("train", "warmup_steps", int, "linear warm-up steps; --init-from: a quarter epoch, 10 to 100"),
    "--weight-decay": ("train", "weight_decay", float, "AdamW weight decay"),
    "--clip": ("train", "clip", float, "gradient-norm clip"),
    "--epochs": ("train", "epochs", int, "stop after this many passes over the data (0 = 20, or no limit with"
                                        " --time-budget: the budget alone ends the run)"),
    "--max-steps": ("train", "max_steps", int, "stop after this many steps (0 = no limit)"),
    "--time-budget": ("train", "time_budget", float, "seconds of training, validation included (0 = no limit);"
                                                    " the schedule is fitted to it, and a probe of this machine's"
                                                    " speed picks the model size, --batch-size, --seq-len and"
                                                    " --eval-every that learn most in it, except those given"),
    "--eval-every": ("train", "eval_every", int, "steps between validations and checkpoints"),
    "--patience": ("train", "patience", int, "early stop after this many validations without improvement (0 = off)"),
    "--seed": ("train", "seed", int, "seed for weights, dropout and batch order"),
    "--device": ("train", "device", str, "auto, cpu or cuda"),
    "--threads": ("train", "threads", int, "CPU threads (0 = automatic: the library's own choice, as in every command)"),
    "--sample-every": ("train", "sample_every", int, "print samples every N steps (0 = never)"),
    "--sample-size": ("train", "sample_size", int, "how many samples then"),
    "--target": ("train", "target", float, "validation nats/token the run aims at: drawn on loss.png, met or not"
                                           " said at the end (0 = none)"),
}


def default_text(section: str, name: str) -> str:
    """'default: X' for a setting, with the word level's value where it differs."""
    plain = getattr(getattr(RunConfig(), section), name)
    word = level_defaults("word").get(section, {}).get(name, plain)
    return f"default: {plain!r}" + (f"; word level: {word!r}" if word != plain else "")


def train_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lstmgen train", description="Train an LSTM language model on a corpus.",
                      epilog="Precedence: built-in defaults < --init-from model < the run's config.json (--resume)"
                             " < --config recipe < flags.")
    p.add_argument("corpus", nargs="?", help="text file (running text) or TXT/CSV records file (with --resume:"
                                             " default the run's own)")
    p.add_argument("--config", help="TOML recipe with [data], [model] and [train] tables; a relative corpus path"
                                    " in it is relative to the recipe file (default: none)")
    p.add_argument("--level", choices=["char", "word"], default=None, help="token level (default: char)")
    p.add_argument("--records", action=argparse.BooleanOptionalAction, default=None,
                   help="one item a line, each generated on its own (default: on for .csv files and when"
                        " --init-from is a records model, else off)")
    p.add_argument("--out", help="run folder for checkpoints and logs (default: runs/<corpus name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; corpus and settings come from its"
                        " config.json unless given again (default: off)")
    p.add_argument("--init-from", metavar="MODEL",
                   help="fine-tune: start from a shipped model's name, an fp32 artifact folder or a run folder;"
                        " its vocabulary is extended by what is new in the corpus (default: random weights)")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine (launches torchrun; gloo on CPU, NCCL on CUDA;"
                        " default: one process, no torchrun)")
    p.add_argument("--tie-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="share embedding and output weights; needs --embed-dim == --hidden-size (default: off;"
                        " word level: on when the sizes are equal)")
    p.add_argument("--keep-case", action="store_true", help="word level: do not lowercase (default: lowercase)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar on a terminal; in a redirected log one line per validation)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
    for flag, (section, name, typ, text) in FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=f"{text} ({default_text(section, name)})")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lstmgen export", description="Export a trained run to an ONNX artifact folder.")
    p.add_argument("run", help="run folder written by lstmgen train")
    p.add_argument("--out", required=True, help="artifact folder to write (replaced atomically; required, no default)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization (validation loss checked; default: fp32)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint to export (default: %(default)s)")
    p.add_argument("--name", help="model name stored in the manifest (default: the folder name)")
    p.add_argument("--force", action="store_true",
                   help="replace an artifact at --out that was exported from another run (default: refuse)")
    p.add_argument("--allow-int8-loss", action="store_true", help="export int8 even if it loses over 1%% validation loss (default: refuse)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
    return p


def recipe_corpus(recipe_path: str, recipe: dict[str, Any]) -> str | None:
    """The recipe's corpus path, resolved against the recipe file's folder when relative."""
    corpus = recipe.get("data", {}).get("corpus")
    if not corpus or os.path.isabs(corpus):
        return corpus
    return str((Path(recipe_path).resolve().parent / corpus).resolve())


def typed_flags(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Only the settings the user typed on the command line."""
    flags: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for flag, (section, name, _, _) in FLAGS.items():
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is not None:
            flags[section][name] = v
    if args.level is not None:
        flags["data"]["level"] = args.level
    if args.records is not None:
        flags["data"]["records"] = args.records
    if args.tie_weights is not None:
        flags["model"]["tie_weights"] = args.tie_weights
    if args.keep_case:
        flags["data"]["lowercase"] = False
    return flags


def planner_choices(args: argparse.Namespace, start=None) -> frozenset[str]:
    """What the time-budget planner may set: what neither a flag nor the recipe gave (the shape not
    when fine-tuning, which keeps the starting model's). Nothing without a budget or on --resume."""
    if args.resume:
        return frozenset()
    recipe = load_recipe(args.config) if args.config else {}
    given = {name for section in typed_flags(args).values() for name in section}
    given |= {name for section in ("model", "train") for name in recipe.get(section, {})}
    choices = {k for k in ("lr", "warmup_steps") if k not in given} if start is not None else set()
    budget = args.time_budget if args.time_budget is not None else recipe.get("train", {}).get("time_budget", 0)
    if budget:
        choices |= {k for k in ("batch_size", "seq_len", "eval_every", "threads") if k not in given}
        if start is None and not {"embed_dim", "hidden_size", "num_layers", "tie_weights"} & given:
            choices.add("shape")
    return frozenset(choices)


def build_config(args: argparse.Namespace, start=None, notice=lambda m: None) -> RunConfig:
    """The run's settings from every source, in precedence order (see the module docstring)."""
    recipe = load_recipe(args.config) if args.config else {}
    flags = typed_flags(args)
    resumed = saved_config(args.out) if args.resume and args.out else None
    corpus = (os.path.abspath(args.corpus) if args.corpus else None) or (recipe_corpus(args.config, recipe) if args.config
                                                                        else None)
    if resumed is not None:
        cfg = resumed
    else:
        if not corpus:
            raise LstmgenError("no corpus given: name a text file (or set data.corpus in the --config recipe)")
        level = flags["data"].get("level") or recipe.get("data", {}).get("level") or (start.config.data.level if start
                                                                                      else "char")
        cfg = RunConfig()
        apply_overrides(cfg, level_defaults(level), "defaults")
        if start is not None:
            from .finetune import finetune_defaults

            apply_overrides(cfg, finetune_defaults(start), "--init-from")
        if "records" not in recipe.get("data", {}) and "records" not in flags["data"] and corpus.lower().endswith(".csv"):
            flags["data"]["records"] = True
    apply_overrides(cfg, recipe, f"config {args.config}")
    apply_overrides(cfg, flags, "flags")
    if corpus:
        cfg.data.corpus = corpus
    tie_given = "tie_weights" in flags["model"] or "tie_weights" in recipe.get("model", {})
    if cfg.model.tie_weights and cfg.model.embed_dim != cfg.model.hidden_size and not tie_given and resumed is None:
        cfg.model.tie_weights = False
        notice(f"note: weights untied (word level ties them by default, but --embed-dim {cfg.model.embed_dim} !="
               f" --hidden-size {cfg.model.hidden_size})")
    cfg.validate()
    return cfg


def saved_config(run_dir: str) -> RunConfig:
    """The resolved config a run was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise LstmgenError(f"{run_dir} has no config.json: not a run folder to --resume (train it first)")
    try:
        return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise LstmgenError(f"{path} is not valid JSON ({e})") from None


def main(argv: Sequence[str]) -> int:
    command, rest = argv[0], list(argv[1:])
    debug = "--debug" in rest
    try:
        if command == "train":
            return run_train(rest)
        if command == "export":
            return run_export(rest)
        raise LstmgenError(f"unknown command {command!r}")
    except LstmgenError as e:
        if debug:
            raise
        print(f"lstmgen: error: {e}", file=sys.stderr)
        return 2


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_train(argv: list[str]) -> int:
    from .train import train

    args = train_parser().parse_args(argv)
    if args.resume and not args.out:
        raise LstmgenError("--resume needs --out RUN: the run folder to continue")
    if args.resume and args.init_from:
        raise LstmgenError("--resume continues a run from its checkpoint; --init-from starts a new one (give one)")
    start = None
    if args.init_from:
        from .finetune import load_starting_point

        start = load_starting_point(args.init_from)
    launching = args.nproc is not None and "WORLD_SIZE" not in os.environ  # the ranks will say it, once
    speaks = not launching and os.environ.get("RANK", "0") == "0"
    cfg = build_config(args, start, notice=say if speaks else (lambda m: None))
    if launching:
        from .distributed import launch

        rest = [a for i, a in enumerate(argv) if a != "--nproc" and not (i > 0 and argv[i - 1] == "--nproc")
                and not a.startswith("--nproc=")]
        return launch(args.nproc, rest)
    out = args.out or os.path.join("runs", Path(cfg.data.corpus).stem)
    result = train(cfg, out, resume=args.resume, progress=not args.no_progress, log=say, start=start,
                   choose=planner_choices(args, start))
    return 130 if result.status == "interrupted" else 0


def run_export(argv: list[str]) -> int:
    from .export import export

    args = export_parser().parse_args(argv)
    export(args.run, args.out, int8=args.int8, which=args.checkpoint, name=args.name, force=args.force,
           allow_int8_loss=args.allow_int8_loss, log=say)
    return 0
