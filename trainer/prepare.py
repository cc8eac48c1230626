"""The streaming prepare pass: a corpus of any size -> vocabulary + token ids in memory-mapped files.

Why: reading a corpus as one string, then a Python list, then an int64 array needs about 18 bytes
of memory per character in every process; a 1 GB corpus did not fit. Here the corpus is read in
chunks (lstmgen.corpus.stream_text) twice or three times, and the ids go straight to disk, in the
smallest unsigned type that holds the vocabulary (1 byte a token for a char model). Training then
maps the files (numpy.memmap): the operating system pages in what a batch touches, so memory does not
grow with the corpus, and every data-parallel rank maps the same files instead of reading the corpus.

    pass 1  sizes        characters (running text) or records; char level: the vocabulary too
    split                where validation starts, by splits.py's rule (last 10% of the characters,
                         or a seeded 10% of the records)
    pass 2  vocabulary   word level only: the words of the training part, counted
    pass 3  encode       each chunk encoded and appended to train.bin or val.bin

What RUN/data/ holds (reused by --resume and by every rank while meta.json still matches the corpus):

    meta.json   format, the corpus files (size, mtime), the data settings, tokenizer, dtype, counts
    train.bin   training ids      val.bin   validation ids           (uint8 / uint16 / uint32)
    train.idx   records only: int64 offsets into train.bin (val.idx the same for val.bin)
    val.txt     the validation split as text, for export's final figure (at most FINAL_VAL_CHARS)

Records share their end markers, so n records take n + 1 <eos> and the index n + 1 offsets:

    ids      <eos> e m m a <eos> a v a <eos> b o <eos>
    offsets  0               5         9       12
    record i = ids[offsets[i] : offsets[i+1] + 1]   ->   [<eos> a v a <eos>] for i = 1

which is exactly the array the in-memory path (data.prepare) builds for record i.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lstmgen.corpus import CHUNK_BYTES, corpus_files, parse_records, read_text, stream_text
from lstmgen.errors import LstmgenError
from lstmgen.manifest import record_hashes
from lstmgen.tokenizer import EOS, Tokenizer, split_words

from .config import DataConfig
from .data import PreparedData, RecordSet, val_sample
from .splits import RECORD_SPLIT_SEED, VALIDATION_FRACTION

FORMAT = "lstmgen-prepared"
VERSION = 1
FINAL_VAL_CHARS = 10_000_000  # val.txt (export's figure) stops here: a 1 GB corpus's 100 MB split would take hours
UNICODE = 0x110000  # code points; a char model's lookup table has one entry each (4.4 MB)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


def prepare_on_disk(cfg: DataConfig, folder: Path, *, base_tokenizer: Tokenizer | None = None, progress: bool = False,
                    log: Callable[[str], None] = print, val_sample_chars: int = 0,
                    chunk_bytes: int = CHUNK_BYTES) -> PreparedData:
    """Prepare the corpus into `folder` (or reuse what is there for the same corpus and settings) and
    map it. Only one process may call this for a folder at a time (data-parallel: rank 0, then the
    others call `load_prepared` after a barrier). `chunk_bytes`: the reading size (tests make it tiny)."""
    meta = _identity(cfg, base_tokenizer)
    saved = _read_meta(folder)
    if saved is not None and saved.get("identity") == meta:
        return load_prepared(folder, val_sample_chars)
    if saved is not None:
        log(f"the corpus or data settings changed since {folder} was prepared; preparing it again")
    _write_prepared(cfg, folder, meta, base_tokenizer, progress, log, chunk_bytes)
    return load_prepared(folder, val_sample_chars)


def load_prepared(folder: Path, val_sample_chars: int = 0) -> PreparedData:
    """Map a prepared folder: the training split as a memmap, a bounded validation sample in memory."""
    meta = _read_meta(folder)
    if meta is None:
        raise LstmgenError(f"{folder} holds no prepared data (meta.json); train again without --resume to prepare it")
    tok = Tokenizer.from_dict(meta["tokenizer"])
    dtype = np.dtype(meta["dtype"])
    train = _map(folder / "train.bin", dtype)
    val = _map(folder / "val.bin", dtype)
    records = meta["records"]
    if records:
        train = RecordSet(train, _map(folder / "train.idx", np.int64))
        val = RecordSet(val, _map(folder / "val.idx", np.int64))
    val_text = (folder / "val.txt").read_text(encoding="utf-8")
    sample, sample_text = val_sample(val, val_text, records, tok, val_sample_chars)
    hashes = np.fromfile(folder / "records.u64", dtype="<u8") if records else None
    counts = np.asarray(meta["token_counts"], dtype=np.int64)
    return PreparedData(tok, records, train, sample, sample_text, hashes, meta["start_ids"], counts,
                        val_path=folder / "val.txt")


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _identity(cfg: DataConfig, base: Tokenizer | None) -> dict:
    """What prepared data depends on: the files as they are on disk, the data settings, a base vocabulary."""
    files = [{"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
             for p in corpus_files(cfg.corpus)]
    return {"format": FORMAT, "version": VERSION, "files": files, "data": asdict(cfg),
            "base_tokens": base.tokens if base is not None else None}


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------
# Writing: into a temporary folder beside the target, renamed into place when complete
# ----------------------------------------------------------------------------------------------------

def _write_prepared(cfg: DataConfig, folder: Path, identity: dict, base: Tokenizer | None, progress: bool,
                    log: Callable[[str], None], chunk_bytes: int) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.preparing"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.perf_counter()
    total = sum(f["size"] for f in identity["files"])
    reader = _Reader(cfg.corpus, total, progress, chunk_bytes)
    try:
        prep = (_RecordsPass if cfg.records else _TextPass)(cfg, reader, base)
        meta = prep.write(tmp)
        meta["identity"] = identity
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        reader.close()
    seconds = time.perf_counter() - started
    log(f"prepared {total / 1e6:,.1f} MB of corpus in {seconds:.1f} s ({total / 1e6 / max(seconds, 1e-9):,.1f} MB/s,"
        f" {reader.passes} passes): {meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens"
        f" ({meta['dtype']}) in {folder}")


class _Reader:
    """The corpus's text, chunk by chunk, as many passes as asked; a progress bar over bytes on a terminal."""

    def __init__(self, spec: str, total_bytes: int, progress: bool, chunk_bytes: int) -> None:
        self.spec, self.total, self.passes, self.chunk_bytes = spec, total_bytes, 0, chunk_bytes
        self.bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="preparing", leave=False)

    def chunks(self) -> Iterator[str]:
        self.passes += 1
        if self.bar is not None:
            self.bar.reset(self.total)
            self.bar.set_description(f"preparing (pass {self.passes})")
        for piece in stream_text(self.spec, self.chunk_bytes):
            if self.bar is not None:
                self.bar.update(len(piece))  # characters: bytes for ASCII text, close enough for a bar
            yield piece

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Writer:
    """Appends ids to a .bin file (and, for records, offsets to an .idx file)."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.f, self.dtype, self.count = open(path, "wb"), dtype, 0

    def add(self, ids: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self.count += len(ids)

    def close(self) -> None:
        self.f.close()


class _CharCodes:
    """Char level: characters -> ids with one NumPy lookup per chunk (no Python loop per character)."""

    def __init__(self) -> None:
        self.counts = np.zeros(UNICODE, dtype=np.int64)

    @staticmethod
    def codes(text: str) -> np.ndarray:
        """The code points of `text`: one byte each for ASCII text (4x less to move), else four."""
        if text.isascii():
            return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")

    def count(self, text: str) -> None:
        found = np.bincount(self.codes(text))
        self.counts[: len(found)] += found

    def table(self, tok: Tokenizer) -> np.ndarray:
        """Code point -> id, in the ids' own type (the vocabulary holds every character of the corpus)."""
        lut = np.zeros(UNICODE, dtype=token_dtype(tok.vocab_size))
        for i, t in enumerate(tok.tokens):
            if len(t) == 1:
                lut[ord(t)] = i
        return lut


def _counts_of(tok: Tokenizer, counter: Callable[[str], int]) -> list[int]:
    return [int(counter(t)) for t in tok.tokens]


class _TextPass:
    """Running text: the last VALIDATION_FRACTION of the characters is validation (splits.split_text)."""

    def __init__(self, cfg: DataConfig, reader: _Reader, base: Tokenizer | None) -> None:
        self.cfg, self.reader, self.base = cfg, reader, base
        self.chars = _CharCodes()
        self.words: Counter[str] = Counter()

    def parts(self, cut: int) -> Iterator[tuple[str, bool]]:
        """(text, is_validation) pieces of a pass, split exactly at character `cut`."""
        pos = 0
        for piece in self.reader.chunks():
            end = pos + len(piece)
            if end <= cut:
                yield piece, False
            elif pos >= cut:
                yield piece, True
            else:
                yield piece[: cut - pos], False
                yield piece[cut - pos:], True
            pos = end

    def vocabulary(self) -> tuple[Tokenizer, int]:
        n = 0
        for piece in self.reader.chunks():
            n += len(piece)
            if self.cfg.level == "char":
                self.chars.count(piece)
        cut = int(n * (1 - VALIDATION_FRACTION))
        if self.cfg.level == "char":
            tok = Tokenizer("char", [chr(c) for c in np.flatnonzero(self.chars.counts)])
        else:
            for text, is_val in self.parts(cut):
                if not is_val:
                    self.words.update(split_words(text, self.cfg.lowercase))
            tok = Tokenizer.from_word_counts(self.words, records=False, min_count=self.cfg.min_count,
                                             lowercase=self.cfg.lowercase)
        return (self.base.extended(tok) if self.base is not None else tok), cut

    def write(self, folder: Path) -> dict:
        tok, cut = self.vocabulary()
        dtype = token_dtype(tok.vocab_size)
        train, val = _Writer(folder / "train.bin", dtype), _Writer(folder / "val.bin", dtype)
        lut = self.chars.table(tok) if tok.level == "char" else None
        first = None
        with open(folder / "val.txt", "w", encoding="utf-8") as val_txt:
            kept = 0
            for text, is_val in self.parts(cut):
                ids = lut[_CharCodes.codes(text)] if lut is not None else np.array(tok.encode(text), dtype=np.int64)
                (val if is_val else train).add(ids)
                first = int(ids[0]) if first is None and len(ids) else first
                if is_val and kept < FINAL_VAL_CHARS:
                    val_txt.write(text[: FINAL_VAL_CHARS - kept])
                    kept += min(len(text), FINAL_VAL_CHARS - kept)
        train.close()
        val.close()
        if train.count < 4 or val.count < 2:
            raise LstmgenError(f"{self.cfg.corpus} is too short to train on ({train.count + val.count} tokens);"
                               " give more text")
        newline = tok.index.get("\n")
        counts = (_counts_of(tok, lambda t: self.chars.counts[ord(t)] if len(t) == 1 else 0) if tok.level == "char"
                  else _counts_of(tok, lambda t: self.words.get(t, 0)))
        return {"format": FORMAT, "version": VERSION, "tokenizer": tok.to_dict(), "records": False,
                "dtype": dtype.name, "train_tokens": train.count, "val_tokens": val.count,
                "start_ids": [newline if newline is not None else first], "token_counts": counts}


class _RecordsPass:
    """Records: one per non-empty line (CSV: row); a seeded VALIDATION_FRACTION of them is validation."""

    def __init__(self, cfg: DataConfig, reader: _Reader, base: Tokenizer | None) -> None:
        self.cfg, self.reader, self.base = cfg, reader, base
        self.csv = any(p.suffix.lower() == ".csv" for p in corpus_files(cfg.corpus))
        self.chars = _CharCodes()
        self.words: Counter[str] = Counter()

    def records(self) -> Iterator[list[str]]:
        """The records, in chunks (CSV files are parsed one file at a time, in memory)."""
        if self.csv:
            self.reader.passes += 1
            for path in corpus_files(self.cfg.corpus):
                yield parse_records(read_text(path), csv_format=path.suffix.lower() == ".csv", column=self.cfg.column,
                                    source=str(path), min_records=0)
            return
        for piece in self.reader.chunks():
            yield [r for r in (line.strip() for line in piece.split("\n")) if r]

    def split(self) -> np.ndarray:
        """Pass 1: count the records (char level: and their characters); True marks validation."""
        n = 0
        for chunk in self.records():
            n += len(chunk)
            if self.cfg.level == "char" and chunk:
                self.chars.count("".join(chunk))
        if n < 2:
            raise LstmgenError(f"{self.cfg.corpus} holds {n} record(s); records mode needs at least 2 (one item a line),"
                               " or use it as running text without --records")
        # splits.split_records' rule, kept as a mask: the same records as the in-memory path picks.
        n_val = max(1, int(round(n * VALIDATION_FRACTION)))
        is_val = np.zeros(n, dtype=bool)
        is_val[random.Random(RECORD_SPLIT_SEED).sample(range(n), n_val)] = True
        return is_val

    def vocabulary(self, is_val: np.ndarray) -> Tokenizer:
        if self.cfg.level == "char":
            tok = Tokenizer("char", [EOS] + [chr(c) for c in np.flatnonzero(self.chars.counts)], eos_id=0)
        else:
            a = 0
            for chunk in self.records():
                for r, v in zip(chunk, is_val[a: a + len(chunk)]):
                    if not v:
                        self.words.update(split_words(r, self.cfg.lowercase))
                a += len(chunk)
            tok = Tokenizer.from_word_counts(self.words, records=True, min_count=self.cfg.min_count,
                                             lowercase=self.cfg.lowercase)
        return self.base.extended(tok) if self.base is not None else tok

    def write(self, folder: Path) -> dict:
        is_val = self.split()
        tok = self.vocabulary(is_val)
        dtype = token_dtype(tok.vocab_size)
        out = {False: _RecordWriter(folder, "train", dtype, tok), True: _RecordWriter(folder, "val", dtype, tok)}
        hashes, a = [], 0
        with open(folder / "val.txt", "w", encoding="utf-8") as val_txt:
            kept = 0
            for chunk in self.records():
                flags = is_val[a: a + len(chunk)]
                a += len(chunk)
                hashes.append(record_hashes(chunk))
                for v in (False, True):
                    part = [r for r, f in zip(chunk, flags) if f == v]
                    out[v].add(part)
                    if v and kept < FINAL_VAL_CHARS and part:
                        text = "\n".join(part) + "\n"
                        val_txt.write(text)
                        kept += len(text)
        for w in out.values():
            w.close()
        np.unique(np.concatenate(hashes)).astype("<u8").tofile(folder / "records.u64")
        counts = (_counts_of(tok, lambda t: self.chars.counts[ord(t)] if len(t) == 1 else 0) if tok.level == "char"
                  else _counts_of(tok, lambda t: self.words.get(t, 0)))
        return {"format": FORMAT, "version": VERSION, "tokenizer": tok.to_dict(), "records": True, "dtype": dtype.name,
                "train_tokens": out[False].ids.count, "val_tokens": out[True].ids.count, "start_ids": [tok.eos_id],
                "train_records": out[False].n, "val_records": out[True].n, "token_counts": counts}


class _RecordWriter:
    """Records as one id stream with shared end markers, and the offsets of each record's first <eos>."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, tok: Tokenizer) -> None:
        self.ids = _Writer(folder / f"{name}.bin", dtype)
        self.idx = _Writer(folder / f"{name}.idx", np.dtype(np.int64))
        self.tok, self.n = tok, 0
        self.lut = _CharCodes().table(tok) if tok.level == "char" else None
        if self.lut is not None:
            self.lut[ord("\n")] = tok.eos_id  # records hold no line break: it marks where one ends

    def add(self, records: list[str]) -> None:
        if not records:
            return
        if self.lut is not None:
            ids = self.lut[_CharCodes.codes("\n".join(records) + "\n")]
        else:
            ids = np.array([i for r in records for i in (*self.tok.encode(r), self.tok.eos_id)], dtype=np.int64)
        if self.n == 0:
            self.ids.add(np.array([self.tok.eos_id]))
        ends = np.flatnonzero(ids == self.tok.eos_id) + self.ids.count  # each record's closing <eos>
        starts = np.concatenate([[self.ids.count - 1], ends[:-1]])
        self.idx.add(starts)
        self.ids.add(ids)
        self.n += len(records)

    def close(self) -> None:
        self.idx.add(np.array([self.ids.count - 1]))  # the last record's closing <eos>
        self.ids.close()
        self.idx.close()
