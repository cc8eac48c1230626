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
import os
import sys
from typing import Sequence

from .errors import LstmgenError

DELEGATED = {"train": "lstmgen.trainer.cli", "export": "lstmgen.trainer.cli", "bench": "lstmgen.bench.cli"}


class OneLineParser(argparse.ArgumentParser):
    """Bad flags end in one `lstmgen: error:` line (exit 2) like every other bad input, not the whole usage.
    Subcommands' parsers are of this class too (add_subparsers makes them so), and so are train's, export's
    and bench's."""

    def error(self, message: str):
        raise LstmgenError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lstmgen", description="Train, export and run LSTM text generators.")
    p.add_argument("--version", action="version", version=f"lstmgen {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("train", help="train a model on a corpus (needs the 'train' extra: PyTorch)", add_help=False)
    sub.add_parser("export", help="export a trained run to an ONNX artifact (needs the 'train' extra)", add_help=False)
    sub.add_parser("bench", help="measure tokens/s of the engine against PyTorch", add_help=False)

    for add in (_add_generate, _add_score, _add_serve, _add_inspect, _add_add_graph, _add_upgrade, _add_compile_pattern,
                _add_info_and_list):
        add(sub)
    for choice in sub._choices_actions:  # a command's --help opens with what it does: its one-line help, unless it says more
        command = sub.choices[choice.dest]
        command.description = command.description or f"{choice.help[0].upper()}{choice.help[1:]}."
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


# The options of `lstmgen generate`, in --help order; their flags and help come from lstmgen.options.
GENERATE_FLAGS = ("num", "max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                  "repetition_window", "frequency_penalty", "presence_penalty", "seed", "stop", "bias", "ban",
                  "echo", "logprobs", "allow_unk", "regex", "min_length", "max_length")


def _add_generate(sub) -> None:
    """`lstmgen generate`: sampling, prompts, output form."""
    from .options import add_cli_flags, option

    g = sub.add_parser("generate", help="generate text with an exported or shipped model",
                       description="Generate text. With no MODEL, a shipped default model is used.")
    g.add_argument("model", nargs="?", help="artifact folder or shipped model name (default: the shipped 'names')")
    prompt = g.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", "-p", default=None, help="text the samples start with (default: none)")
    prompt.add_argument("--prompt-file", default=None, metavar="FILE",
                        help="one prompt a line; --num samples for each (default: none)")
    add_cli_flags(g, GENERATE_FLAGS, defaults={"num": "1; records models 10", "seed": "random",
                                               "logprobs": "off; needs --json"})
    g.add_argument("--stream", action="store_true", help="print text as it is generated (one sample; default off)")
    known = g.add_mutually_exclusive_group()
    known.add_argument("--novel", action="store_true", default=None,
                       help=f"{option('novel').help} (the default for records models whose artifact lists the corpus"
                            " records, except with --stream)")
    known.add_argument("--allow-known", dest="novel", action="store_false",
                       help="records models: plain samples, which may repeat items of the training data (default: off)")
    g.add_argument("--json", action="store_true", help="print one JSON object with a 'samples' list (default: text)")
    add_runtime_flags(g)


def _add_score(sub) -> None:
    """`lstmgen score`: a text file's negative log-likelihood."""
    s = sub.add_parser("score", help="negative log-likelihood of a text file under a model")
    s.add_argument("model", help="artifact folder or shipped model name")
    s.add_argument("file", help="text to score (records models: one item a line)")
    s.add_argument("--records", action="store_true", help="score as records (default: what the model was trained on)")
    s.add_argument("--segments", "--streams", dest="segments", type=int, default=1,
                   help="running text: score in this many contiguous segments, each from a fresh state (default:"
                        " %(default)s). It changes the figure: each segment's first tokens are predicted with no"
                        " context. Training validates with the run's eval_segments; pass that to reproduce its figure")
    s.add_argument("--per-line", action="store_true",
                   help="one score per line (records: per record), to rank candidates; JSON lines with --json (default: one score)")
    s.add_argument("--strict", action="store_true",
                   help="refuse text with characters outside the vocabulary (default: count them as oov, score the rest)")
    s.add_argument("--column", default="0", help="CSV records: column index or header name (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print one JSON object (default: text)")
    add_runtime_flags(s)


def _add_serve(sub) -> None:
    """`lstmgen serve`: bind, security and limits of the HTTP server."""
    v = sub.add_parser("serve", help="serve models over HTTP with dynamic batching")
    v.add_argument("models", nargs="*", help="artifact folders or shipped model names (default: the default model)")
    v.add_argument("--default-model", default=None, metavar="NAME",
                   help="the model a request that names none gets (default: the first one served)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: %(default)s)")
    v.add_argument("--port", type=int, default=8088, help="TCP port (default %(default)s; 0 = any free port)")
    v.add_argument("--api-key", default=os.environ.get("LSTMGEN_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every endpoint but /v1/health"
                        " (default: $LSTMGEN_API_KEY, which keeps the key out of `ps`; else none)")
    v.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser pages from this origin call the API (repeatable; '*' = any; default none)")
    from .server.limits import add_cli_flags

    add_cli_flags(v)  # --max-body, --max-tokens-limit, ...: lstmgen.server.limits.Limits owns them
    v.add_argument("--verbose", "-v", action="store_true", help="access log: one line per request with latency and tokens (default: off)")
    add_runtime_flags(v)


def _add_inspect(sub) -> None:
    """`lstmgen inspect`: the surprisal and cells page."""
    n = sub.add_parser("inspect", help="a page of a text's surprisal and the LSTM cells that track it",
                       description="Write one self-contained HTML page: the text coloured by surprisal and by"
                                   " chosen cells, cells found to track quotes, line position, words..., saturation.")
    n.add_argument("model", help="artifact folder or shipped model name")
    n.add_argument("file", nargs="?", help="text to read (records models: one item a line); or use --text (default: none)")
    n.add_argument("--text", default=None, help="the text itself, instead of FILE (default: none)")
    n.add_argument("--out", default="inspect.html", help="HTML page to write (default: %(default)s)")
    n.add_argument("--cell", action="append", default=[],
                   help="also colour the text by this cell: [c|h]LAYER:UNIT from 0, e.g. c1:37 (c = cell state, the"
                        " default; h = output); repeatable (default: none)")
    n.add_argument("--top", type=int, default=5, help="cells listed per feature (default: %(default)s)")
    n.add_argument("--show-per-feature", type=int, default=1, help="best cells per feature drawn over the text (default: %(default)s)")
    n.add_argument("--show-tokens", type=int, default=20000,
                   help="tokens drawn in each coloured text; statistics use all (default: %(default)s)")
    add_runtime_flags(n)


def _add_add_graph(sub) -> None:
    """`lstmgen add-graph`: generate.onnx for artifacts exported before it existed."""
    a = sub.add_parser("add-graph", help="add generate.onnx (one-call generation for other runtimes) to artifacts",
                       description="Write generate.onnx into artifact folders exported before it existed and list it in"
                                   " their manifests; model.onnx is left untouched. Needs the onnx package.")
    a.add_argument("models", nargs="+", help="artifact folders or shipped model names (at least one)")
    a.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")


PATTERN_FLAGS = ("regex", "min_length", "max_length", "ban", "allow_unk")  # what a compiled pattern depends on


def _add_compile_pattern(sub) -> None:
    """`lstmgen compile-pattern`: a pattern's tables for generate.onnx callers (js/, other runtimes)."""
    from .options import add_cli_flags

    c = sub.add_parser("compile-pattern", help="compile --regex / --min-length / --max-length into the tables"
                       " generate.onnx takes (for the JavaScript module and other runtimes)",
                       description="Write a pattern compiled over a model's vocabulary as JSON (lstmgen.patterns):"
                                   " pass it as `pattern` to js/lstmgen.mjs's generate. It depends on the bans"
                                   " (--ban, --allow-unk): give the same ones to generate.")
    c.add_argument("model", help="artifact folder or shipped model name")
    add_cli_flags(c, PATTERN_FLAGS)
    c.add_argument("--out", default="-", help="file to write (default: standard output)")
    c.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")


def _add_upgrade(sub) -> None:
    """`lstmgen upgrade`: artifacts of an older format rewritten in the current one."""
    a = sub.add_parser("upgrade", help="rewrite artifacts of an older format in the current one (a faster step)",
                       description="Rewrite artifact folders of format 1 in format 2: model.onnx takes the LSTM state per"
                                   " layer (same weights, same text, fewer nodes per step), generate.onnx is rebuilt."
                                   " The folder is replaced atomically. Needs the onnx package.")
    a.add_argument("models", nargs="+", help="artifact folders or shipped model names (at least one)")
    a.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")


def _add_info_and_list(sub) -> None:
    """`lstmgen info` and `lstmgen list`: what an artifact is, which models ship."""
    i = sub.add_parser("info", help="describe an artifact (with no MODEL: list the shipped models)")
    i.add_argument("model", nargs="?", help="artifact folder or shipped model name (default: list the shipped models)")
    i.add_argument("--json", action="store_true", help="print the manifest (default: a summary)")
    sub.add_parser("list", help="list the shipped models, one line each")


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where ONNX Runtime runs (default: %(default)s: CUDA when onnxruntime-gpu has it, else CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime intra-op threads (default: 0 = automatic, as in every command)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")


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
        args, unknown = _parser().parse_known_args(argv)
        if unknown:  # argparse would blame the top-level parser; name the command the flag was given to
            raise LstmgenError(f"lstmgen {args.command}: unrecognized arguments: {' '.join(unknown)}"
                               f" (see lstmgen {args.command} --help)")
        commands = {"generate": cmd_generate, "score": cmd_score, "info": cmd_info, "serve": cmd_serve, "list": cmd_list,
                    "inspect": cmd_inspect, "add-graph": cmd_add_graph, "upgrade": cmd_upgrade,
                    "compile-pattern": cmd_compile_pattern}
        return commands[args.command](args)
    except LstmgenError as e:
        if debug:
            raise
        print(f"lstmgen: error: {_worded_for_the_cli(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("lstmgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lstmgen generate | head`
        return 0


def _worded_for_the_cli(e: LstmgenError) -> str:
    """An option error names the flag (--top-k), as the user typed it; other errors are already worded."""
    from .options import OptionError, cli_message

    return cli_message(e) if isinstance(e, OptionError) else str(e)


def _training_lines(t: dict) -> list[str]:
    """info's lines on how the model was trained: what the manifest records of it, or that it records nothing."""
    if not t.get("corpus") and "steps" not in t:
        return ["  trained on  (not recorded in the manifest)"]
    return [f"  trained on  {t.get('corpus', '?')} on {t.get('machine', '?')}",
            f"  exported    {t.get('checkpoint', 'checkpoint')} from step {t.get('steps', '?')}"
            + (f" of a {t['run_steps']}-step run" if "run_steps" in t else "") + f" ({t.get('train_seconds', '?')} s of training)"]


def _check_runtime(args) -> None:
    if args.threads is not None and not (0 <= args.threads <= 1024):
        raise LstmgenError(f"--threads must be in [0, 1024] (0 = automatic), got {args.threads}")


def cmd_generate(args) -> int:
    from .generator import Generator
    from .sampling import new_seed

    _check_runtime(args)
    gen = Generator.load(args.model, device=args.device, threads=args.threads)
    if args.prompt and gen.tokenizer.fold(args.prompt) != args.prompt:
        print("lstmgen: note: this model's vocabulary is lower case; the prompt is read in lower case", file=sys.stderr)
    if args.regex is not None and gen.tokenizer.folds_case:
        print("lstmgen: note: this model's vocabulary is lower case; the pattern is matched ignoring case", file=sys.stderr)
    unseen = _unseen_words(gen.tokenizer, args.prompt)
    if unseen:
        print(f"lstmgen: note: {len(unseen)} word(s) of the prompt are not in this model's vocabulary and are read as"
              f" <unk>: {', '.join(repr(w) for w in unseen[:5])}{' ...' if len(unseen) > 5 else ''}", file=sys.stderr)
    hint = gen.prompt_hint(args.prompt)
    if hint:
        print(f"lstmgen: hint: {hint}", file=sys.stderr)
    options = {name: getattr(args, name) for name in GENERATE_FLAGS}
    options["bias"] = _parse_bias(args.bias) or None
    scoring = args.max_tokens == 0  # the prompt as read, with its scores under --json --logprobs: one is enough
    options["num"] = args.num if args.num is not None else (10 if gen.records and not args.stream and not scoring else 1)
    options["seed"] = args.seed if args.seed is not None else new_seed()
    if args.logprobs is not None and not args.json:
        raise LstmgenError("--logprobs N prints log-probabilities in the JSON output: add --json")
    if args.stream:
        return _stream(gen, args, options)
    prompts = _read_prompts(args.prompt_file) if args.prompt_file else None
    # A names model that hands back names from its own corpus is not what people run it for, so
    # records models default to new items when the artifact can tell which ones are new.
    options["novel"] = args.novel if args.novel is not None else gen.lists_its_records and not scoring
    with _progress(options["num"] * len(prompts or [None])) as bar:
        out = gen.generate(prompt=args.prompt, prompts=prompts, progress=bar.update, **options)
    groups = out if prompts is not None else [out]
    _warn_if_few_novel(groups, options, gen)
    _warn_if_cut(groups, options, gen)
    if args.json:
        _print_json(gen, groups, prompts, options)
    else:
        print(("\n" if gen.records else "\n\n----\n\n").join(s for g in groups for s in g))
    return 0


def _unseen_words(tokenizer, prompt: str | None) -> list[str]:
    """A word model's prompt words it has no token for (it reads each as <unk>), in order, each once."""
    if not prompt or tokenizer.level != "word":
        return []
    return list(dict.fromkeys(w for w in tokenizer.pieces(tokenizer.fold(prompt)) if w not in tokenizer.index))


def _stream(gen, args, options: dict) -> int:
    """--stream: one sample printed as it is written."""
    if options["num"] != 1 or args.json or args.novel or args.prompt_file:
        raise LstmgenError("--stream prints one sample as it is written: use it without --num > 1, --json,"
                           " --novel or --prompt-file")
    for piece in gen.stream(args.prompt, **{k: v for k, v in options.items() if k not in ("num", "logprobs")}):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _warn_if_few_novel(groups: list[list], options: dict, gen) -> None:
    if options["novel"] and any(len(g) < options["num"] for g in groups):
        # A sample cut at --max-tokens before its pattern matched is no record, so it is never counted as new.
        cut = (f"; with --regex, samples cut at --max-tokens {gen.settings(max_tokens=options['max_tokens'])['max_tokens']}"
               " before they matched the pattern are not counted: raise --max-tokens") if options["regex"] else ""
        print(f"lstmgen: warning: found only {min(len(g) for g in groups)} novel samples of {options['num']} asked for"
              f" (raise --temperature, or add --allow-known{cut})", file=sys.stderr)


def _warn_if_cut(groups: list[list], options: dict, gen) -> None:
    """A pattern the model finds unlikely can run into --max-tokens: say so rather than print cut samples silently."""
    cut = [s for g in groups for s in g if s.pattern_accepted is False]
    if cut:
        limit = gen.settings(max_tokens=options["max_tokens"])["max_tokens"]
        print(f"lstmgen: warning: {len(cut)} of {sum(len(g) for g in groups)} samples were cut at --max-tokens {limit}"
              " before they matched the pattern (the model finds it unlikely; raise --max-tokens or --temperature)",
              file=sys.stderr)


def _print_json(gen, groups: list[list], prompts: list[str] | None, options: dict) -> None:
    """One JSON object: 'samples' (one list per prompt with --prompt-file; objects with --logprobs) and
    'finish_reasons' beside them (why each sample ended: end_of_record, stop_string, length, pattern_end);
    with a pattern, 'pattern_accepted' too (false: cut before it matched)."""
    detailed = options["logprobs"] is not None
    samples = [[s.to_dict() if detailed else s.text for s in g] for g in groups]
    reasons = [[s.finish_reason for s in g] for g in groups]
    one = prompts is None
    body = {"samples": samples[0], "finish_reasons": reasons[0]} if one else {
        "prompts": prompts, "samples": samples, "finish_reasons": reasons}
    if any(options.get(name) is not None for name in ("regex", "min_length", "max_length")):
        accepted = [[s.pattern_accepted for s in g] for g in groups]
        body["pattern_accepted"] = accepted[0] if one else accepted
    from .options import SAMPLING_OPTIONS

    settings = {**gen.sampling(**{o.name: options[o.name] for o in SAMPLING_OPTIONS}).__dict__,
                "max_tokens": gen.settings(max_tokens=options["max_tokens"])["max_tokens"]}
    print(json.dumps({"model": gen.manifest.name or str(gen.folder), "seed": options["seed"], "novel": options["novel"],
                      **body, "settings": settings}, ensure_ascii=False))


def _parse_bias(items: list[str]) -> dict[str, float]:
    bias: dict[str, float] = {}
    for item in items:
        token, sep, value = item.rpartition("=")
        try:
            bias[token] = float(value)
        except ValueError:
            sep = ""
        if not sep or not token:
            raise LstmgenError(f"--bias takes TOKEN=VALUE (e.g. --bias e=2.5), got {item!r}")
    return bias


def _read_prompts(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            prompts = f.read().splitlines()
    except FileNotFoundError:
        raise LstmgenError(f"prompt file not found: {path} (check the path)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LstmgenError(f"cannot read prompt file {path} ({e}); give a UTF-8 text file, one prompt a line") from None
    if not prompts:
        raise LstmgenError(f"{path} holds no prompts (one prompt a line)")
    return prompts


def _progress(total: int):
    """A progress bar on stderr when it is a terminal and the run takes more than a moment."""
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", disable=not sys.stderr.isatty(), delay=1.0, leave=False, file=sys.stderr)


def cmd_score(args) -> int:
    from .corpus import parse_records, read_text
    from .generator import Generator

    _check_runtime(args)
    if args.segments < 1:
        raise LstmgenError(f"--segments must be an integer >= 1, got {args.segments}")
    gen = Generator.load(args.model, device=args.device, threads=args.threads)
    text = read_text(args.file)
    records = args.records or gen.records
    if records:
        text = "\n".join(parse_records(text, csv_format=args.file.lower().endswith(".csv"), column=args.column,
                                       source=args.file, min_records=1))
    if args.per_line:
        return _print_per_line(gen, text, records, args)
    score = gen.score(text, records=records, segments=args.segments, strict=args.strict)
    covers = score.coverage()
    if args.json:
        print(json.dumps({**score.to_dict(), "covers": covers or "all tokens"}))
    else:
        print(f"{score.nats_per_token:.4f} nats/token, perplexity {score.perplexity:.3f},"
              f" {score.bits_per_char:.4f} bits/char over {score.tokens} tokens ({score.chars} chars),"
              f" oov {score.oov} ({score.oov_rate:.2%})" + (f"; {covers}" if covers else ""))
    return 0


def _print_per_line(gen, text: str, records: bool, args) -> int:
    from .scoring import score_per_line

    for line, score in score_per_line(gen, text, records=records, strict=args.strict):
        if args.json:
            print(json.dumps({"text": line, **(score.to_dict() if score else {"nats_per_token": None})},
                             ensure_ascii=False))
        elif score is None:
            print(f"-\t{line}")
        else:
            print(f"{score.nats_per_token:.4f}\t{line}" + (f"\t(oov {score.oov})" if score.oov else ""))
    return 0


def cmd_serve(args) -> int:
    from .generator import Generator

    try:
        from .server import make_server, serve
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("starlette", "uvicorn", "prometheus_client", "h11", "anyio", "pydantic", "pydantic_core"):
            raise LstmgenError(f"`lstmgen serve` needs {e.name}, which is not installed: pip install 'lstmgen[serve]'") from None
        raise
    from .server.limits import from_args

    _check_runtime(args)
    limits = from_args(args)  # checks each limit (one line naming the flag)
    if not (0 <= args.port <= 65535):
        raise LstmgenError(f"--port must be in [0, 65535], got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise LstmgenError("--api-key (or LSTMGEN_API_KEY) is empty; give a key or leave it unset")
    models = {}
    for ref in args.models or [None]:
        g = Generator.load(ref, device=args.device, threads=args.threads)
        name = g.manifest.name or g.folder.name
        if name in models:
            raise LstmgenError(f"two models are named {name!r}; serve each once")
        models[name] = g
    log = lambda m: print(m, file=sys.stderr, flush=True)
    try:
        server = make_server(models, args.host, args.port, limits, api_key=args.api_key, cors_origins=args.cors_origin,
                             access_log=log if args.verbose else None, default_model=args.default_model)
    except OSError as e:
        raise LstmgenError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port") from None
    serve(server, log=log)
    return 0


def cmd_inspect(args) -> int:
    from .inspection.page import cmd_inspect as run

    _check_runtime(args)
    return run(args)


def cmd_list(args) -> int:
    from .generator import resolve_model, shipped_models
    from .manifest import read_manifest

    for name in shipped_models():
        m = read_manifest(resolve_model(name))
        kind = "records" if m.records else "running text"
        val = f", validation {m.validation_nats:.4f} nats/token" if m.validation_nats is not None else ""
        print(f"{name:<18} {m.tokenizer['level']}-level {kind}, {m.precision},"
              f" vocab {m.dims.vocab_size}, hidden {m.dims.hidden_size} x {m.dims.num_layers}{val}")
    return 0


def _need_onnx(command: str) -> None:
    """The graph commands build ONNX files: without the onnx package, one line saying how to get it."""
    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError:
        raise LstmgenError(f"`lstmgen {command}` needs the onnx package: pip install onnx (or the 'bench' extra)") from None


def cmd_add_graph(args) -> int:
    _need_onnx("add-graph")
    from .graphs.generation import add_generation_graph
    from .manifest import graph_problem

    def add(folder, before) -> None:
        was_sound = before.generate_sha256 is not None and graph_problem(folder, before) is None
        after = add_generation_graph(folder)
        same = (after.generate_sha256, after.generate_web_sha256) == (before.generate_sha256, before.generate_web_sha256)
        print(f"{folder / 'generate.onnx'}: already up to date (rebuilt to the same bytes)" if was_sound and same
              else f"wrote {folder / 'generate.onnx'}")

    return _each_artifact(args.models, add)


def _each_artifact(names, work) -> int:
    """Run work(folder, manifest) on each artifact named; every one is found and its manifest read (once, and
    handed to work) before any folder changes, and an error on one says which were not attempted after it
    (those before it are done, and said so)."""
    from .generator import resolve_model
    from .manifest import read_manifest

    folders = [resolve_model(name) for name in names]
    manifests = [read_manifest(folder, check_graphs=False) for folder in folders]
    for i, (folder, manifest) in enumerate(zip(folders, manifests)):
        try:
            work(folder, manifest)
        except LstmgenError as e:
            left = folders[i + 1:]
            raise LstmgenError(f"{e} (not attempted: {', '.join(map(str, left))})" if left else str(e)) from None
    return 0


def cmd_compile_pattern(args) -> int:
    from .generator import Generator

    gen = Generator.load(args.model, device="cpu")
    pattern = gen.pattern(**{name: getattr(args, name) for name in PATTERN_FLAGS})
    if pattern is None:
        raise LstmgenError("give a pattern: --regex, --min-length or --max-length")
    text = json.dumps(pattern.to_dict(gen.manifest.name or gen.folder.name), separators=(",", ":"))
    if args.out == "-":
        print(text)
        return 0
    try:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.out)
    except OSError as e:
        raise LstmgenError(f"cannot write {args.out} ({e.strerror}); check the path") from None
    print(f"wrote {args.out}: {pattern.states} states", file=sys.stderr)
    return 0


def cmd_upgrade(args) -> int:
    _need_onnx("upgrade")
    from .graphs.upgrade import upgrade_artifact

    def upgrade(folder, _) -> None:
        try:
            m, changed = upgrade_artifact(folder)
        except OSError as e:
            raise LstmgenError(f"cannot rewrite {folder} ({e.strerror or e}); copy it somewhere writable and upgrade the copy") from None
        print(f"{folder}: {'upgraded to' if changed else 'already'} format {m.format_version}")

    return _each_artifact(args.models, upgrade)


def cmd_info(args) -> int:
    from .generator import resolve_model
    from .manifest import FORMAT_VERSION, graph_problem, read_manifest

    if args.model is None:
        if args.json:
            raise LstmgenError("info --json describes one model: name it (lstmgen list shows the shipped ones)")
        return cmd_list(args)
    folder = resolve_model(args.model)
    m = read_manifest(folder, check_graphs=False)  # a broken generate.onnx is reported below, not fatal
    if args.json:
        print(m.to_json(), end="")
        return 0
    d, t = m.dims, m.training
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    lines = [
        f"{m.name or folder.name}: {m.tokenizer['level']}-level {'records' if m.records else 'running-text'} LSTM,"
        f" {m.precision}, format v{m.format_version}" + ("" if m.format_version >= FORMAT_VERSION else
                                                         f" (`lstmgen upgrade {folder}` makes it v{FORMAT_VERSION}: a faster step)"),
        f"  folder      {folder} ({size / 1e6:.2f} MB)",
        f"  dims        vocab {d.vocab_size}, embed {d.embed_dim}, hidden {d.hidden_size} x {d.num_layers} layers",
        *_training_lines(t),
    ]
    val = m.validation_nats if m.validation_nats is not None else t.get("val_nats_per_token")
    if val is not None:
        lines.append(f"  validation  {val:.4f} nats/token")
    if "parity_max_abs_diff" in m.export:
        lines.append(f"  parity      max |diff| {m.export['parity_max_abs_diff']:.1e} vs PyTorch")
    df = m.defaults
    lines.append(f"  defaults    temperature {df.temperature}, top-k {df.top_k}, top-p {df.top_p},"
                 f" max tokens {df.max_tokens}")
    problem = graph_problem(folder, m)
    lines.append(f"  graph       unusable: {problem}" if problem else
                 "  graph       generate.onnx (one-call generation for JS and other runtimes; omits "
                 f"{', '.join(m.generate_omits)})" if m.generate_sha256 else
                 f"  graph       none (add generate.onnx with `lstmgen add-graph {folder}`)")
    print("\n".join(lines))
    return 0
