"""The generation options, declared once: this table is the contract every interface derives from.

Each `Option` row says what an option is (name, type, range, default and where the default comes
from, one line of help), where callers can set it (`surfaces`: the Python API, the CLI, the native
HTTP API, the OpenAI-compatible API) and which runtimes apply it (`runtimes`: the Python engine,
generate.onnx, the JavaScript module). From the table come:

    the Python checks and their messages    `Option.check`, `check_options`
    the sampling settings of the kernel     lstmgen.sampling.SamplingParams (the `sampling` rows)
    the manifest's sampling defaults        lstmgen.manifest.SamplingDefaults (the `manifest` rows)
    the CLI flags and their help            `add_cli_flags` (lstmgen.cli)
    the HTTP fields and OpenAPI schema      lstmgen.server.schemas (with the server's limits as caps)
    what generate.onnx omits                `graph_omits()` (manifest `generate_omits`, GraphGenerator)
    the JavaScript checks                   js/options.mjs, written by `python -m lstmgen.options`

So adding an option is one row here plus its kernel (lstmgen.sampling or lstmgen.decoding). A
message names the option as its caller spells it: `top_k` in Python and HTTP, `--top-k` on the
command line (`OptionError.spelled`), and carries the caller's real limit (a server caps
max_tokens and num lower than the engine does).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .errors import LstmgenError

ENGINE, GRAPH, JS = "engine", "graph", "js"  # runtimes: the Python engine, generate.onnx (any ONNX Runtime), js/
JS_SESSION = "js-session"  # js/'s step-by-step Session over model.onnx (its own sampler, not generate.onnx)
PYTHON, CLI, NATIVE, OPENAI = "python", "cli", "native", "openai"  # surfaces where a caller sets an option
EVERY_RUNTIME = frozenset({ENGINE, GRAPH, JS})
STEPWISE = frozenset({ENGINE, JS_SESSION})  # the Python engine and js/'s Session, not generate.onnx
EVERY_SURFACE = frozenset({PYTHON, CLI, NATIVE, OPENAI})
ALWAYS = object()  # `off` of an option that always acts: a runtime without it cannot run at all
GREEDY_BELOW = 1e-6  # temperatures under this sample greedily: 1/T would overflow to inf and NaN the draw
MAX_SEED = 2**63  # seeds are int64 in every runtime


class OptionError(LstmgenError):
    """A bad option value; `spelled(name)` words the same message for another surface's spelling."""

    def __init__(self, option: "Option", template: str, **values) -> None:
        self.option, self.template, self.values = option, template, values
        super().__init__(template.format(name=option.name, **values))

    @property
    def param(self) -> str:
        return self.option.name

    def spelled(self, name: str) -> str:
        return self.template.format(name=name, **self.values)


@dataclass(frozen=True)
class Option:
    """One generation option. `kind` is one of KINDS; `low`/`high` bound numbers (open ends say so)."""

    name: str  # the Python keyword, the native HTTP field and the manifest key (snake_case)
    kind: str
    default: Any  # built in; a `manifest` option's default comes from the artifact instead
    help: str  # one line: what it does (the --help text, the OpenAPI description, the playground's tooltip)
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the range excludes `low`
    high_open: bool = False
    manifest: bool = False  # the artifact's manifest holds this option's default (SamplingDefaults)
    sampling: bool = False  # one of the kernel's settings (SamplingParams)
    off: Any = ALWAYS  # the value at which the option changes nothing: a runtime lacking it accepts only this
    runtimes: frozenset = frozenset({ENGINE})
    surfaces: frozenset = EVERY_SURFACE
    openai_name: str | None = None  # its OpenAI field name when that differs (num is OpenAI's n)
    cap: str | None = None  # the server's Limits field that lowers `high` there
    depends_on: str | None = None  # acts only through that option (the window of the repetition penalty)
    flag: str | None = None  # the CLI flag, when not --name-with-dashes
    short: str | None = None  # a one-letter CLI alias
    metavar: str | None = None
    records_only: bool = False  # acts on records models only (a running-text model refuses it)
    js_instead: str | None = None  # how js/ takes it instead, when not as itself (a pattern's compiled tables)

    # -- how callers spell it -------------------------------------------------------------------------
    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def js_name(self) -> str:
        head, *rest = self.name.split("_")
        return head + "".join(w.capitalize() for w in rest)

    def applies_in(self, runtime: str) -> bool:
        return runtime in self.runtimes

    # -- checking -------------------------------------------------------------------------------------
    def describe(self, high: float | None = None) -> str:
        """What a valid value is, in words: 'an integer in [1, 2000]'."""
        return KINDS[self.kind].describe(self, self.high if high is None else high)

    def check(self, value: Any, high: float | None = None) -> Any:
        """The value, checked and normalised (e.g. a lone stop string becomes a list); raises OptionError."""
        return KINDS[self.kind].check(self, value, self.high if high is None else high)

    def bad(self, value: Any, high: float | None = None, why: str = "") -> OptionError:
        return OptionError(self, "{name} must be {what}, got {value}{why}", what=self.describe(high),
                           value=_shown(value), why=why)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- kinds of value ---------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) or type(x).__module__ == "numpy" and "int" in type(x).__name__


def _is_number(x) -> bool:
    return _is_int(x) or isinstance(x, float) or type(x).__module__ == "numpy" and "float" in type(x).__name__


def _bound(x) -> str:
    """2**63 reads better as a power of two."""
    return "2^63" if x == 2**63 else f"{x:g}" if isinstance(x, float) else f"{x}"


def _interval(o: Option, high) -> str:
    lo = "(" if o.low_open else "["
    hi = ")" if o.high_open else "]"
    return f"{lo}{o.low:g}, {high:g}{hi}"


def _in_range(o: Option, x: float, high) -> bool:
    above = x > o.low if o.low_open else x >= o.low
    below = x < high if o.high_open else x <= high
    return above and below


class _Number:
    """An integer or any finite number in [low, high] (either end open where the row says so)."""

    def __init__(self, integer: bool) -> None:
        self.integer = integer

    def describe(self, o: Option, high) -> str:
        if self.integer:
            return f"an integer in [{int(o.low)}, {_bound(high)}{')' if o.high_open else ']'}"
        return f"a number in {_interval(o, high)}"

    def check(self, o: Option, v, high):
        ok = _is_int(v) if self.integer else _is_number(v) and math.isfinite(v)
        if not ok or not _in_range(o, v, high):
            raise o.bad(v, high)
        return int(v) if self.integer else float(v)


class _Bool:
    @staticmethod
    def describe(o: Option, high) -> str:
        return "true or false"

    @staticmethod
    def check(o: Option, v, high):
        if v is not True and v is not False:
            raise o.bad(v)
        return v


class _Texts:
    """A list of non-empty texts; one text alone counts as a list of one."""

    @staticmethod
    def describe(o: Option, high) -> str:
        return "a text or a list of texts, none empty" + (f", at most {high:g}" if high is not None else "")

    @staticmethod
    def check(o: Option, v, high):
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
            raise o.bad(v, high)
        if high is not None and len(items) > high:
            raise o.bad(v, high)
        return list(items)


class _Text:
    """One non-empty text of at most `high` characters."""

    @staticmethod
    def describe(o: Option, high) -> str:
        return f"a non-empty text of at most {high:g} characters"

    @staticmethod
    def check(o: Option, v, high):
        if not isinstance(v, str) or not v or len(v) > high:
            raise o.bad(v, high)
        return v


class _Map:
    """{key: number in [low, high]}; `keys` says what a key is (token text, or a token id as text or int)."""

    def __init__(self, keys: str, key_ok: Callable[[Any], bool]) -> None:
        self.keys, self.key_ok = keys, key_ok

    def describe(self, o: Option, high) -> str:
        return f"an object mapping {self.keys} to a number in [{o.low:g}, {high:g}]"

    def check(self, o: Option, v, high):
        if not isinstance(v, Mapping):
            raise o.bad(v, high)
        for key, value in v.items():
            if not self.key_ok(key) or not _is_number(value) or not math.isfinite(value) or not o.low <= value <= high:
                raise o.bad({key: value}, high)
        return {k: float(x) for k, x in v.items()}


def _token_id_key(k) -> bool:
    return _is_int(k) and k >= 0 or isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 9


KINDS = {"int": _Number(integer=True), "float": _Number(integer=False), "bool": _Bool(), "texts": _Texts(), "text": _Text(),
         "text_map": _Map("token text", lambda k: isinstance(k, str) and k != ""),
         "id_map": _Map("token ids", _token_id_key)}


# -- the table ------------------------------------------------------------------------------------------
OPTIONS: tuple[Option, ...] = (
    # The sampling kernel's settings, defaults from the artifact's manifest.
    Option("temperature", "float", 0.8, "0 = greedy (so is anything below 1e-6); higher = more random",
           low=0, high=100, manifest=True, sampling=True, runtimes=EVERY_RUNTIME | STEPWISE, short="-t"),
    Option("top_k", "int", 0, "sample from the k likeliest tokens; 0 = all", low=0, high=1_000_000, manifest=True,
           sampling=True, off=0, runtimes=EVERY_RUNTIME | STEPWISE),
    Option("top_p", "float", 1.0, "nucleus sampling: the likeliest tokens whose probability reaches p; 1 = all",
           low=0, high=1, low_open=True, manifest=True, sampling=True, off=1.0, runtimes=EVERY_RUNTIME | STEPWISE),
    Option("min_p", "float", 0.0, "drop tokens less likely than min_p times the likeliest one; 0 = off",
           low=0, high=1, high_open=True, manifest=True, sampling=True, off=0.0, runtimes=STEPWISE),
    Option("repetition_penalty", "float", 1.0, "> 1 makes tokens seen in the recent window less likely; 1 = off",
           low=1, high=10, manifest=True, sampling=True, off=1.0, runtimes=STEPWISE),
    Option("repetition_window", "int", 32, "how many recent tokens the repetition penalty looks at",
           low=1, high=4096, manifest=True, sampling=True, depends_on="repetition_penalty", runtimes=STEPWISE),
    Option("frequency_penalty", "float", 0.0, "subtracted from a token's logit once per time it was written (OpenAI's"
           " formula); 0 = off", low=-2, high=2, sampling=True, off=0.0, runtimes=STEPWISE),
    Option("presence_penalty", "float", 0.0, "subtracted from the logit of every token already written (OpenAI's"
           " formula); 0 = off", low=-2, high=2, sampling=True, off=0.0, runtimes=STEPWISE),
    # What a request asks for.
    Option("num", "int", 1, "samples per prompt", low=1, high=100_000, runtimes=EVERY_RUNTIME, openai_name="n",
           cap="max_batch", short="-n"),
    Option("max_tokens", "int", 200, "tokens per sample at most; 0 (with echo) scores the prompt and writes nothing"
           " (its scores: logprobs)",
           low=0, high=100_000, manifest=True, runtimes=EVERY_RUNTIME, cap="max_tokens"),
    Option("seed", "int", None, "the same seed gives the same text; random when left out", low=0, high=MAX_SEED,
           high_open=True, runtimes=EVERY_RUNTIME | STEPWISE),
    Option("stop", "texts", (), "end a sample where one of these texts appears (not included)", high=16,
           off=(), metavar="TEXT"),
    Option("echo", "bool", True, "the text starts with the prompt as the model read it", off=True,
           runtimes=EVERY_RUNTIME),
    Option("logprobs", "int", None, "each token's log-probability and its N likeliest alternatives", low=0, high=20,
           off=None, metavar="N"),
    Option("allow_unk", "bool", False, "word models: let samples contain <unk>", off=False,
           runtimes=EVERY_RUNTIME | STEPWISE),
    Option("ban", "texts", (), "tokens, given as text, never written", high=10_000, off=(), runtimes=EVERY_RUNTIME | STEPWISE,
           surfaces=frozenset({PYTHON, CLI, NATIVE}), metavar="TOKEN"),
    Option("bias", "text_map", None, "added to the logits of tokens given as text ({\"e\": 2.0}); ban a token to"
           " rule it out", low=-100, high=100, off=None, surfaces=frozenset({PYTHON, CLI, NATIVE}), runtimes=STEPWISE,
           metavar="TOKEN=VALUE"),
    Option("logit_bias", "id_map", None, "added to the logits of tokens given by id (OpenAI's logit_bias); {} = none",
           low=-100, high=100, off=None, surfaces=frozenset({PYTHON, NATIVE, OPENAI}), runtimes=STEPWISE),
    Option("novel", "bool", False, "records models: only items not in the training corpus, none repeated (nor cut"
           " before a pattern matched)", off=False,
           surfaces=frozenset({PYTHON, CLI, NATIVE})),
    # Constraints (lstmgen.patterns): one automaton over the vocabulary masks what may be written next.
    Option("regex", "text", None, "every sample matches this regular expression in full (records: the whole record;"
           " running text: what follows the prompt)", high=1000, off=None, runtimes=EVERY_RUNTIME,
           metavar="PATTERN", js_instead="pattern"),
    Option("min_length", "int", None, "records models: at least this many characters per record (never cut to fit)",
           low=1, high=10_000, off=None, runtimes=EVERY_RUNTIME, records_only=True, metavar="N",
           js_instead="pattern"),
    Option("max_length", "int", None, "records models: at most this many characters per record (never cut to fit)",
           low=1, high=10_000, off=None, runtimes=EVERY_RUNTIME, records_only=True, metavar="N",
           js_instead="pattern"),
)
PATTERN_OPTIONS = ("regex", "min_length", "max_length")  # compiled together into one automaton
BY_NAME = {o.name: o for o in OPTIONS}
SAMPLING_OPTIONS = tuple(o for o in OPTIONS if o.sampling)
MANIFEST_OPTIONS = tuple(o for o in OPTIONS if o.manifest)
# Step-by-step generation (lstmgen.session.Session, POST /v1/next, js/'s Session) takes what decides each
# next token, not what shapes a whole generation (num, max_tokens, stop, echo, logprobs, novel); a
# pattern decides which tokens may come next, so it is a session's too.
SESSION_OPTIONS = tuple(o.name for o in OPTIONS if o.sampling or o.name in ("seed", "allow_unk", "ban", "bias",
                                                                             "logit_bias", *PATTERN_OPTIONS))


def option(name: str) -> Option:
    return BY_NAME[name]


def on_surface(surface: str) -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if surface in o.surfaces)


def graph_omits() -> list[str]:
    """The options generate.onnx does not apply (the manifest's `generate_omits`): asking for them is an error."""
    return [o.name for o in OPTIONS if GRAPH not in o.runtimes and o.depends_on is None]


def check_options(values: Mapping[str, Any], *, caps: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Each given option (None = not given, left out) checked and normalised; unknown names raise.

    caps: {option name: a lower high bound} (a server's limits)."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise UnknownOption(unknown, BY_NAME)
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        o = BY_NAME[name]
        out[name] = o.check(value, (caps or {}).get(name))
    if "temperature" in out and out["temperature"] < GREEDY_BELOW:
        out["temperature"] = 0.0
    return out


def refuse_unapplied(values: Mapping[str, Any], runtime: str, where: str) -> None:
    """Raise for an option given at a value the runtime would not apply (it would silently differ)."""
    for name, value in values.items():
        o = BY_NAME.get(name)
        if o is None or o.applies_in(runtime) or o.depends_on is not None or value is None:
            continue
        if o.off is ALWAYS or _differs(value, o.off):
            raise OptionError(o, "{where} does not apply {name}; leave it out or generate with the Python engine",
                              where=where)


def _differs(value, off) -> bool:
    if isinstance(off, tuple):
        return bool(value)
    return value != off


class UnknownOption(LstmgenError, TypeError):
    """An option name that is not in the table (a TypeError too, as an unknown keyword argument is)."""

    def __init__(self, names: Iterable[str], known: Iterable[str]) -> None:
        self.names = list(names)
        super().__init__(f"unknown option(s) {', '.join(self.names)} (known: {', '.join(sorted(known))})")


# -- Python signatures ---------------------------------------------------------------------------------------
_PY_TYPES = {"int": "int | None", "float": "float | None", "bool": "bool | None", "texts": "Sequence[str]",
             "text": "str | None",
             "text_map": "dict[str, float] | None", "id_map": "dict[int, float] | None"}


def takes_options(surface: str, exclude: Iterable[str] = ()) -> Callable:
    """Decorate a function taking `**options`: its signature (help(), IDEs that introspect) and docstring
    list the table's options of `surface` as keyword arguments, so the table stays their one declaration."""
    def decorate(func):
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        names = [o for o in on_surface(surface) if o.name not in set(exclude) and o.name not in sig.parameters]
        params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_PY_TYPES[o.kind])
                   for o in names]
        func.__signature__ = sig.replace(parameters=params)
        lines = [f"            {o.name}: {o.help} ({o.describe()})" for o in names]
        func.__doc__ = (func.__doc__ or "").rstrip() + "\n\n        Options:\n" + "\n".join(lines) + "\n"
        return func
    return decorate


# -- the CLI -------------------------------------------------------------------------------------------------
def add_cli_flags(parser: argparse.ArgumentParser, names: Iterable[str], defaults: Mapping[str, str] = {}) -> None:
    """One flag per option: --top-k etc., help from the table, every default shown.

    defaults: {name: how the CLI words a default the table does not fix (e.g. "the model's")}. Values
    are checked later, by the table, so argparse only converts types."""
    for name in names:
        o = BY_NAME[name]
        default = defaults.get(name) or ("the model's" if o.manifest else _cli_default(o))
        flags = [o.cli_flag, *([o.short] if o.short else [])]
        shown = f"{o.help} (default: {default})"
        if o.kind in ("int", "float", "text"):
            parser.add_argument(*flags, dest=name, type={"int": int, "float": float, "text": str}[o.kind], default=None,
                                metavar=o.metavar, help=shown)
        elif o.kind in ("texts", "text_map"):  # a map is given as TOKEN=VALUE items, parsed by the command
            parser.add_argument(*flags, dest=name, action="append", default=[], metavar=o.metavar,
                                help=f"{shown}; repeatable")
        elif o.kind == "bool" and o.default is False:
            parser.add_argument(*flags, dest=name, action="store_true", help=shown)
        elif o.kind == "bool":
            parser.add_argument(o.flag or "--no-" + o.name.replace("_", "-"), dest=name, action="store_false",
                                help=f"turn off: {o.help} (default: {'on' if o.default else 'off'})")


def _cli_default(o: Option) -> str:
    if o.default is None or o.default == () or o.default is False:
        return "none" if o.kind != "bool" else "off"
    return f"{o.default}"


def cli_message(error: OptionError) -> str:
    """An option error worded for the command line: the flag instead of the keyword."""
    return error.spelled(error.option.cli_flag)


# -- JavaScript ------------------------------------------------------------------------------------------------
def js_table() -> list[dict]:
    """The table as js/options.mjs holds it: what lstmgen.mjs needs to check a call as Python does."""
    rows = []
    for o in OPTIONS:
        low, high = o.low, o.high
        rows.append({"name": o.name, "js": o.js_name, "kind": o.kind, "low": low, "high": high,
                     "lowOpen": o.low_open, "highOpen": o.high_open, "manifest": o.manifest, "sampling": o.sampling,
                     "off": None if o.off is ALWAYS else (list(o.off) if isinstance(o.off, tuple) else o.off),
                     "always": o.off is ALWAYS, "js_applies": JS in o.runtimes, "session": o.name in SESSION_OPTIONS,
                     "sessionApplies": JS_SESSION in o.runtimes, "dependsOn": o.depends_on,
                     "jsInstead": o.js_instead, "recordsOnly": o.records_only, "describe": o.describe()})
    return rows


def js_module() -> str:
    """js/options.mjs: regenerate it with `python -c "import lstmgen.options as o; o.write_js()"`."""
    body = json.dumps(js_table(), indent=1, ensure_ascii=False)
    return ("// Generated from lstmgen.options (engine/options.py): do not edit; regenerate with\n"
            "//   python -c \"import lstmgen.options as o; o.write_js()\"\n"
            "// tests/test_options.py checks that it matches the table.\n"
            f"export const GREEDY_BELOW = {GREEDY_BELOW!r};\n"
            f"export const OPTIONS = {body};\n")


def write_js(path: str = "js/options.mjs") -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(js_module())
