"""The `lstmgen` command (also `python -m lstmgen`): generate, score, info here; train and export
come from lstmgen.trainer and bench from lstmgen.bench, imported only when asked for, so that the
engine's commands run with PyTorch absent.

`main(argv) -> int` is what the console script and the tests call. User errors print one line on
stderr and return 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from .errors import LstmgenError

DELEGATED = {"train": "lstmgen.trainer.cli", "export": "lstmgen.trainer.cli", "bench": "lstmgen.bench.cli"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstmgen", description="Train, export and run LSTM text generators.")
    p.add_argument("--version", action="version", version=f"lstmgen {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("train", help="train a model on a corpus (needs the 'train' extra: PyTorch)", add_help=False)
    sub.add_parser("export", help="export a trained run to an ONNX artifact (needs the 'train' extra)", add_help=False)
    sub.add_parser("bench", help="measure tokens/s of the engine against PyTorch", add_help=False)

    g = sub.add_parser("generate", help="generate text with an exported or shipped model",
                       description="Generate text. With no MODEL, a shipped default model is used.")
    g.add_argument("model", nargs="?", help="artifact folder or shipped model name (default: %(default)s)")
    g.add_argument("--num", "-n", type=int, default=None, help="number of samples (default 1; records models 10)")
    g.add_argument("--prompt", "-p", default=None, help="text the samples start with")
    g.add_argument("--max-tokens", type=int, default=None, help="tokens per sample (default from the manifest)")
    add_sampling_flags(g)
    g.add_argument("--seed", type=int, default=None, help="seed; the same seed gives the same text (default random)")
    g.add_argument("--stop", action="append", default=[], help="end a sample where this text appears (repeatable)")
    g.add_argument("--stream", action="store_true", help="print text as it is generated (one sample)")
    known = g.add_mutually_exclusive_group()
    known.add_argument("--novel", action="store_true", default=None,
                       help="records models: only items not in the training data (the default for records models"
                            " whose artifact lists the corpus records, except with --stream)")
    known.add_argument("--allow-known", dest="novel", action="store_false",
                       help="records models: plain samples, which may repeat items of the training data")
    g.add_argument("--allow-unk", action="store_true", help="word models: let samples contain <unk>")
    g.add_argument("--json", action="store_true", help="print one JSON object with a 'samples' list")
    add_runtime_flags(g)

    s = sub.add_parser("score", help="negative log-likelihood of a text file under a model")
    s.add_argument("model", help="artifact folder or shipped model name")
    s.add_argument("file", help="text to score (records models: one item a line)")
    s.add_argument("--records", action="store_true", help="score as records (default: what the model was trained on)")
    s.add_argument("--streams", type=int, default=1, help="running text: score in this many contiguous segments")
    s.add_argument("--column", default="0", help="CSV records: column index or header name")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_flags(s)

    v = sub.add_parser("serve", help="serve models over HTTP with dynamic batching")
    v.add_argument("models", nargs="*", help="artifact folders or shipped model names (default: the default model)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: %(default)s)")
    v.add_argument("--port", type=int, default=8088, help="TCP port (default %(default)s; 0 = any free port)")
    v.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes")
    v.add_argument("--max-tokens-limit", type=int, default=2000, help="largest max_tokens a request may ask")
    v.add_argument("--max-batch", type=int, default=256, help="rows in one model's step loop at once")
    v.add_argument("--max-streams", type=int, default=32, help="concurrent streaming responses")
    v.add_argument("--verbose", "-v", action="store_true", help="log every request")
    add_runtime_flags(v)

    a = sub.add_parser("add-graph", help="add generate.onnx (one-call generation for other runtimes) to artifacts",
                       description="Write generate.onnx into artifact folders exported before it existed and list it in"
                                   " their manifests; model.onnx is left untouched. Needs the onnx package.")
    a.add_argument("models", nargs="+", help="artifact folders or shipped model names")
    a.add_argument("--debug", action="store_true", help="show tracebacks")

    i = sub.add_parser("info", help="describe an artifact")
    i.add_argument("model", nargs="?", help="artifact folder or shipped model name")
    i.add_argument("--json", action="store_true", help="print the manifest")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", "-t", type=float, default=None, help="0 = greedy; higher = more random")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (default: the model's; none = all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--min-p", type=float, default=None, help="drop tokens below min-p x the top probability")
    p.add_argument("--repetition-penalty", type=float, default=None, help=">1 discourages recent tokens (1 = off)")
    p.add_argument("--repetition-window", type=int, default=None, help="recent tokens the penalty looks at")


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where ONNX Runtime runs")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] in DELEGATED:
            try:
                module = importlib.import_module(DELEGATED[argv[0]])
            except ModuleNotFoundError as e:
                if e.name and e.name.split(".")[0] in ("torch", "onnx", "tqdm", "matplotlib"):
                    raise LstmgenError(f"`lstmgen {argv[0]}` needs {e.name}, which is not installed; install the"
                                       " training extra: pip install 'lstmgen[train]' (torch==2.13.0 for the CPU wheel)") from None
                raise
            return module.main(argv)
        args = _parser().parse_args(argv)
        return {"generate": cmd_generate, "score": cmd_score, "info": cmd_info, "serve": cmd_serve,
                "add-graph": cmd_add_graph}[args.command](args)
    except LstmgenError as e:
        if debug:
            raise
        print(f"lstmgen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("lstmgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lstmgen generate | head`
        return 0


def _check_runtime(args) -> None:
    if args.threads is not None and not (1 <= args.threads <= 1024):
        raise LstmgenError(f"--threads must be in [1, 1024], got {args.threads}")


def cmd_generate(args) -> int:
    from .generator import Generator
    from .sampling import new_seed

    _check_runtime(args)
    gen = Generator.load(args.model, device=args.device, threads=args.threads)
    num = args.num if args.num is not None else (10 if gen.records and not args.stream else 1)
    seed = args.seed if args.seed is not None else new_seed()
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    repetition_penalty=args.repetition_penalty, repetition_window=args.repetition_window)
    if args.stream:
        if num != 1 or args.json or args.novel:
            raise LstmgenError("--stream prints one sample as it is written: use it without --num > 1, --json or --novel")
        for piece in gen.stream(args.prompt, max_tokens=args.max_tokens, seed=seed, stop=args.stop,
                                allow_unk=args.allow_unk, **sampling):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    # A names model that hands back names from its own corpus is not what people run it for, so
    # records models default to new items when the artifact can tell which ones are new.
    novel = args.novel if args.novel is not None else gen.lists_its_records
    samples = gen.generate(num, args.prompt, max_tokens=args.max_tokens, seed=seed, stop=args.stop,
                           novel=novel, allow_unk=args.allow_unk, **sampling)
    if novel and len(samples) < num:
        print(f"lstmgen: warning: found only {len(samples)} novel samples of {num} asked for"
              " (raise --temperature, or add --allow-known)", file=sys.stderr)
    if args.json:
        settings = gen.sampling(**sampling)
        print(json.dumps({"model": gen.manifest.name or str(gen.folder), "seed": seed, "novel": novel, "samples": samples,
                          "settings": {**settings.__dict__, "max_tokens": gen._max_tokens(args.max_tokens)}},
                         ensure_ascii=False))
    elif gen.records:
        print("\n".join(samples))
    else:
        print("\n\n----\n\n".join(samples))
    return 0


def cmd_score(args) -> int:
    from .corpus import parse_records, read_text
    from .generator import Generator

    _check_runtime(args)
    gen = Generator.load(args.model, device=args.device, threads=args.threads)
    text = read_text(args.file)
    records = args.records or gen.records
    if records:
        text = "\n".join(parse_records(text, csv_format=args.file.lower().endswith(".csv"), column=args.column,
                                       source=args.file, min_records=1))
    score = gen.score(text, records=records, streams=args.streams)
    if args.json:
        print(json.dumps(score.to_dict()))
    else:
        print(f"{score.nats_per_token:.4f} nats/token, perplexity {score.perplexity:.3f},"
              f" {score.bits_per_char:.4f} bits/char over {score.tokens} tokens ({score.chars} chars)")
    return 0


def cmd_serve(args) -> int:
    from .generator import Generator
    from .server import Limits, make_server, serve

    _check_runtime(args)
    for flag, v in (("--max-body", args.max_body), ("--max-tokens-limit", args.max_tokens_limit),
                    ("--max-batch", args.max_batch), ("--max-streams", args.max_streams)):
        if v < 1:
            raise LstmgenError(f"{flag} must be >= 1, got {v}")
    if not (0 <= args.port <= 65535):
        raise LstmgenError(f"--port must be in [0, 65535], got {args.port}")
    models = {}
    for ref in args.models or [None]:
        g = Generator.load(ref, device=args.device, threads=args.threads)
        name = g.manifest.name or g.folder.name
        if name in models:
            raise LstmgenError(f"two models are named {name!r}; serve each once")
        models[name] = g
    try:
        server = make_server(models, args.host, args.port,
                             Limits(args.max_body, args.max_tokens_limit, args.max_batch, args.max_streams))
    except OSError as e:
        raise LstmgenError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port") from None
    server.verbose = args.verbose
    serve(server, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


def cmd_add_graph(args) -> int:
    from .generator import resolve_model

    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError:
        raise LstmgenError("`lstmgen add-graph` needs the onnx package: pip install onnx (or the 'bench' extra)") from None
    from .generation_graph import add_generation_graph

    for name in args.models:
        folder = resolve_model(name)
        add_generation_graph(folder)
        print(f"wrote {folder / 'generate.onnx'}")
    return 0


def cmd_info(args) -> int:
    from .generator import resolve_model
    from .manifest import read_manifest

    folder = resolve_model(args.model)
    m = read_manifest(folder)
    if args.json:
        print(m.to_json(), end="")
        return 0
    d, t = m.dims, m.training
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    lines = [
        f"{m.name or folder.name}: {m.tokenizer['level']}-level {'records' if m.records else 'running-text'} LSTM,"
        f" {m.precision}, format v{m.format_version}",
        f"  folder      {folder} ({size / 1e6:.2f} MB)",
        f"  dims        vocab {d.vocab_size}, embed {d.embed_dim}, hidden {d.hidden_size} x {d.num_layers} layers",
        f"  trained on  {t.get('corpus', '?')} for {t.get('steps', '?')} steps ({t.get('train_seconds', '?')} s)"
        f" on {t.get('machine', '?')}",
    ]
    val = m.validation_nats if m.validation_nats is not None else t.get("val_nats_per_token")
    if val is not None:
        lines.append(f"  validation  {val:.4f} nats/token")
    lines.append(f"  parity      max |diff| {m.export.get('parity_max_abs_diff', float('nan')):.1e} vs PyTorch")
    df = m.defaults
    lines.append(f"  defaults    temperature {df.temperature}, top-k {df.top_k}, top-p {df.top_p},"
                 f" max tokens {df.max_tokens}")
    lines.append("  graph       generate.onnx (one-call generation for JS and other runtimes; omits "
                 f"{', '.join(m.generate_omits)})" if m.generate_sha256 else
                 f"  graph       none (add generate.onnx with `lstmgen add-graph {folder}`)")
    print("\n".join(lines))
    return 0
