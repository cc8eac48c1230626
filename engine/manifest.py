"""The artifact format: one definition of manifest.json, written by the exporter and read by the engine.

An artifact is a folder:
    manifest.json   this schema (format name + version first, checked loudly on load)
    model.onnx      one step of the model: tokens[batch,time] and the LSTM state -> logits[batch,time,vocab] and
                    the new state; format 2 takes the state one tensor per layer (IONames.state_tensors),
                    format 1 as two stacked tensors h0, c0 (still read; `lstmgen upgrade` rewrites it)
    records.u64     optional: sorted 64-bit hashes of the corpus records, for --novel (no raw corpus)
    generate.onnx   optional: the whole generation in one ONNX Runtime call (lstmgen.graphs.generation),
                    for apps in other languages; artifacts exported before it existed lack it
    generate-web.onnx optional: the same graph in the layout ONNX Runtime Web (the browser) can load
Nothing in it is pickled; JSON and raw little-endian integers only.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import faults
from .errors import LstmgenError
from .options import MANIFEST_OPTIONS, OptionError
from .tokenizer import Tokenizer

FORMAT_NAME = "lstmgen-artifact"
FORMAT_VERSION = 2  # 2: model.onnx takes and returns the state per layer (1: stacked h0/c0, still read)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
RECORDS_FILE = "records.u64"
GENERATE_FILE = "generate.onnx"
GENERATE_WEB_FILE = "generate-web.onnx"
PATTERN_INPUTS = ("pattern_next", "pattern_start")  # generate.onnx's pattern inputs; a graph built before patterns has neither
STATE_PER_LAYER = "per_layer"  # format 2: h0_<l>, c0_<l> -> h1_<l>, c1_<l>, each [1, batch, hidden]
STATE_STACKED = "stacked"  # format 1: h0, c0 -> h1, c1, each [num_layers, batch, hidden]


@dataclass
class Dims:
    vocab_size: int  # rows of the embedding and columns of the logits
    embed_dim: int  # width of a token embedding
    hidden_size: int  # LSTM state width per layer
    num_layers: int  # stacked LSTM layers; h and c are [num_layers, batch, hidden_size]


@dataclass
class IONames:
    tokens: str = "tokens"  # int64 [batch, time]
    h0: str = "h0"  # float32 state in: per layer h0_<l> [1, batch, hidden], or stacked [num_layers, batch, hidden]
    c0: str = "c0"
    logits: str = "logits"  # float32 [batch, time, vocab]
    h1: str = "h1"
    c1: str = "c1"
    state: str = STATE_PER_LAYER  # STATE_PER_LAYER (format 2) or STATE_STACKED (format 1 manifests, which lack it)

    def state_tensors(self, num_layers: int) -> list[tuple[str, str, str, slice]]:
        """(input name, output name, "h" or "c", the layers it holds) of each state tensor of model.onnx.

        One definition for the graph builders, the backend and generate.onnx: per layer, layer l's h is
        h0_<l> in and h1_<l> out; stacked, all layers' h are h0 in and h1 out.
        """
        if self.state == STATE_STACKED:
            every = slice(0, num_layers)
            return [(self.h0, self.h1, "h", every), (self.c0, self.c1, "c", every)]
        return [(f"{name_in}_{layer}", f"{name_out}_{layer}", kind, slice(layer, layer + 1))
                for layer in range(num_layers) for name_in, name_out, kind in ((self.h0, self.h1, "h"), (self.c0, self.c1, "c"))]


# The artifact's own defaults of the options that lstmgen.options marks `manifest` (temperature, top_k,
# ..., max_tokens): one field each, typed by the table ('int' or 'float', as _sub checks them).
SamplingDefaults = make_dataclass(
    "SamplingDefaults", [(o.name, o.kind, field(default=o.default)) for o in MANIFEST_OPTIONS],
    namespace={"__doc__": "An artifact's default for each option lstmgen.options marks `manifest`."})
SamplingDefaults.__module__ = __name__


@dataclass
class Manifest:
    tokenizer: dict[str, Any]  # Tokenizer.to_dict()
    records: bool  # True: each sample is one record ending at <eos>; False: running text
    dims: Dims
    start_ids: list[int]  # context fed before the user's prompt (e.g. [<eos>] for records, ['\n'] for text)
    model_sha256: str  # of model.onnx
    precision: str = "fp32"  # "fp32" or "int8"
    io: IONames = field(default_factory=IONames)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    name: str = ""  # short model name, e.g. "names"
    training: dict[str, Any] = field(default_factory=dict)  # corpus, seed, config, machine, metrics
    export: dict[str, Any] = field(default_factory=dict)  # parity figures, int8 losses, versions, time
    records_sha256: str | None = None  # of records.u64 when present
    generate_sha256: str | None = None  # of generate.onnx when present
    generate_web_sha256: str | None = None  # of generate-web.onnx when present
    generate_omits: list[str] = field(default_factory=list)  # sampling settings generate.onnx does not apply
    chat: dict[str, Any] | None = None  # the chat template (lstmgen.chat.ChatTemplate.from_dict); None = by kind of model
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def validation_nats(self) -> float | None:
        """The exporter's validation score (nats/token) of this artifact at its own precision, if recorded."""
        return self.export.get("val_nats_per_token_int8" if self.precision == "int8" else "val_nats_per_token_fp32")

    def to_json(self) -> str:
        d = asdict(self)
        if self.format_version == 1:
            del d["io"]["state"]  # as format 1 wrote it, so that the lstmgen of that format still reads it
        if d["chat"] is None:
            del d["chat"]  # absent means the same (a template by kind of model), and older readers never saw it
        # The header comes first so that a person (or `head`) sees what the file is.
        ordered = {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}
        return json.dumps(ordered, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise LstmgenError(f"{where} is not a JSON object (not an lstmgen artifact?)")
        if d.get("format") != FORMAT_NAME:
            raise LstmgenError(f"{where} is not an lstmgen artifact (format is {d.get('format')!r}, expected {FORMAT_NAME!r})")
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise LstmgenError(f"{where} has no integer format_version")
        if version > FORMAT_VERSION:
            raise LstmgenError(f"{where} has format version {version}, newer than this lstmgen reads ({FORMAT_VERSION}); upgrade lstmgen")
        if version < 1:
            raise LstmgenError(f"{where} has an invalid format version {version}")
        try:
            kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
            missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING and f.default_factory is MISSING]
            if missing:
                raise LstmgenError(f"{where} lacks required field(s): {', '.join(missing)}")
            kw["dims"] = _sub(Dims, d["dims"], f"{where}: dims")
            kw["io"] = _sub(IONames, d.get("io", {}), f"{where}: io")
            if version == 1:  # format 1 predates per-layer state: its model.onnx stacks the layers
                kw["io"].state = STATE_STACKED
            kw["defaults"] = _checked_defaults(_sub(SamplingDefaults, d.get("defaults", {}), f"{where}: defaults"), where)
            m = cls(**kw)
        except LstmgenError:
            raise
        except (TypeError, KeyError, ValueError, AttributeError) as e:
            raise LstmgenError(f"{where} is malformed ({e})") from None
        m._check(where)
        return m

    def _check(self, where: str) -> None:
        tok = Tokenizer.from_dict(self.tokenizer) if isinstance(self.tokenizer, dict) else None
        if tok is None:
            raise LstmgenError(f"{where}: tokenizer must be an object")
        for k in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            v = getattr(self.dims, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise LstmgenError(f"{where}: dims.{k} must be a positive integer, got {v!r}")
        if tok.vocab_size != self.dims.vocab_size:
            raise LstmgenError(
                f"{where}: the vocabulary has {tok.vocab_size} tokens but the model was built for {self.dims.vocab_size}"
                " (was the vocabulary edited? re-export the model)")
        if not isinstance(self.records, bool):
            raise LstmgenError(f"{where}: records must be true or false")
        if self.records and tok.eos_id is None:
            raise LstmgenError(f"{where}: a records model needs an <eos> token in its vocabulary")
        if not isinstance(self.start_ids, list) or not self.start_ids or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < tok.vocab_size for i in self.start_ids):
            raise LstmgenError(f"{where}: start_ids must be a non-empty list of token ids inside the vocabulary")
        if self.precision not in ("fp32", "int8"):
            raise LstmgenError(f"{where}: precision must be 'fp32' or 'int8', got {self.precision!r}")
        if self.io.state not in (STATE_PER_LAYER, STATE_STACKED):
            raise LstmgenError(f"{where}: io.state must be {STATE_PER_LAYER!r} or {STATE_STACKED!r}, got {self.io.state!r}")
        if not (isinstance(self.model_sha256, str) and len(self.model_sha256) == 64):
            raise LstmgenError(f"{where}: model_sha256 must be a 64-character hex digest")


def _sub(klass, value: Any, where: str):
    if not isinstance(value, dict):
        raise LstmgenError(f"{where} must be an object")
    known = {f.name for f in fields(klass)}
    unknown = set(value) - known
    if unknown:
        raise LstmgenError(f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
    try:
        obj = klass(**value)
    except TypeError as e:
        raise LstmgenError(f"{where} is incomplete ({e})") from None
    for f in fields(klass):
        v = getattr(obj, f.name)
        want = (int, float) if f.type == "float" else {"int": int, "str": str}.get(f.type, object)
        if isinstance(v, bool) or not isinstance(v, want):
            raise LstmgenError(f"{where}.{f.name} must be of type {f.type}, got {v!r}")
    return obj


def _checked_defaults(defaults, where: str):
    """The artifact's defaults in the options' ranges, or an error naming the manifest's field (not a flag
    or argument the user never gave)."""
    for o in MANIFEST_OPTIONS:
        try:
            o.check(getattr(defaults, o.name))
        except OptionError as e:
            raise LstmgenError(f"{where}: {e.spelled('defaults.' + o.name)}; fix the file or re-export the model") from None
    return defaults


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_hash(record: str) -> int:
    """64-bit hash of one record's text, as stored in records.u64."""
    return int.from_bytes(hashlib.blake2b(record.encode("utf-8"), digest_size=8).digest(), "little")


def record_hashes(records) -> np.ndarray:
    return np.unique(np.array([record_hash(r) for r in records], dtype=np.uint64))


def read_manifest(folder: str | os.PathLike, check_graphs: bool = True) -> Manifest:
    """Read and check folder/manifest.json and the sha256 of the files it names (but generate.onnx's and
    generate-web.onnx's when not check_graphs: the Python engine never reads them, and `lstmgen add-graph`
    rebuilds them, so a stale or missing one is no error there)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if folder.is_file():
        raise LstmgenError(f"{folder} is a file, not a model folder (give an exported artifact folder or a shipped model name)")
    if not folder.is_dir():
        raise LstmgenError(f"model folder not found: {folder} (give an exported artifact folder or a shipped model name)")
    if not path.is_file():
        raise LstmgenError(f"{folder} has no {MANIFEST_FILE}: not an lstmgen artifact (export one with `lstmgen export`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LstmgenError(f"{path} is not valid JSON ({e}); re-export the model") from None
    m = Manifest.from_dict(data, str(path))
    model = folder / MODEL_FILE
    if not model.is_file():
        raise LstmgenError(f"{folder} has no {MODEL_FILE} (the artifact is incomplete; re-export it)")
    if sha256_file(model) != m.model_sha256:
        raise LstmgenError(f"{model} does not match the sha256 in its manifest (truncated, replaced or corrupt); re-export it")
    if m.records_sha256 is not None:
        rec = folder / RECORDS_FILE
        if not rec.is_file() or sha256_file(rec) != m.records_sha256:
            raise LstmgenError(f"{rec} is missing or does not match its sha256 in the manifest; re-export the model")
    problem = graph_problem(folder, m) if check_graphs else None
    if problem:
        raise LstmgenError(problem)
    return m


def graph_problem(folder: Path, m: Manifest) -> str | None:
    """Why a graph file the manifest lists (generate.onnx, generate-web.onnx) cannot be trusted, or None.
    Only what runs them needs them: the Python engine reads model.onnx alone."""
    for name, digest in ((GENERATE_FILE, m.generate_sha256), (GENERATE_WEB_FILE, m.generate_web_sha256)):
        gen = folder / name
        if digest is not None and (not gen.is_file() or sha256_file(gen) != digest):
            return (f"{gen} is missing or does not match its sha256 in the manifest (truncated, replaced or"
                    " corrupt); rebuild it with `lstmgen add-graph` or re-export the model")
    return None


def read_record_hashes(folder: str | os.PathLike) -> np.ndarray:
    return np.fromfile(Path(folder) / RECORDS_FILE, dtype="<u8")


def write_artifact_atomically(final: str | os.PathLike, fill) -> None:
    """Build an artifact in a temporary sibling folder with `fill(tmp_dir)`, then move it into place.

    An interrupted export leaves at most a hidden temporary folder, never a half-written artifact.
    An existing artifact is replaced only once the new one is complete. Replacing takes two renames
    (old aside, new in place); a kill between them leaves the old one at `.NAME.old`, which the next
    export puts back before it starts. Temporary folders of killed exports are removed then too.
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    stale_old = final.with_name(f".{final.name}.old")
    if stale_old.exists() and not final.exists():
        os.replace(stale_old, final)
    for leftover in final.parent.glob(f".{final.name}.*.tmp"):
        _rmtree(leftover)
    # mkdir, not mkdtemp: mkdtemp makes the folder owner-only, and an artifact is a folder like any
    # other (the umask decides); the random name keeps concurrent exports apart all the same.
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    old = None
    try:
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        faults.pause("export-write")
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                _rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        _rmtree(tmp)
        if old is not None and old.exists() and not final.exists():
            os.replace(old, final)
        raise
    if old is not None:
        _rmtree(old)


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
