"""Reading corpora from disk with clear errors: running text, or records (one item a line, TXT or CSV).

Shared by the trainer (training data) and the engine (`lstmgen score`), so both read a file the same way.
Which part of a corpus is validation is the trainer's policy: lstmgen.trainer.splits.

A corpus is a file, a folder or a glob (`corpus_files`). What a corpus *is* lives here, beside the
rules for one file, so that every reader (the trainer's streaming prepare pass, the in-memory
reference path, `lstmgen score`) agrees on which files and in what order:

    folder/            every regular file below it, recursively, hidden ones (.name) left out
    "data/*.txt"       the files the glob matches (** reaches into sub-folders)
    order              sorted by path (code-point order of the path string), so a run is repeatable
    running text       the files one after another; a line break is put between two files where
                       the first does not end with one (a file's last line never runs into the next)
    records            one record per non-empty line of each file (CSV: per row of each file)

`stream_text` reads them in chunks that end at a line break, so a corpus larger than memory is
read in bounded memory; `read_corpus` is the same text as one string, for small corpora.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import os
from pathlib import Path
from typing import Iterator

from .errors import LstmgenError

CHUNK_BYTES = 8 << 20  # streaming reads: big enough for NumPy to run at full speed, small beside memory
GLOB_CHARS = set("*?[")


def corpus_files(spec: str | os.PathLike) -> list[Path]:
    """The files a corpus names (a file, a folder or a glob), in the documented order."""
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return [Path(spec)]
    if os.path.isdir(spec):
        found = [p for p in Path(spec).rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(spec).parts)]
        if not found:
            raise LstmgenError(f"corpus folder {spec} holds no files (put .txt files in it)")
        return sorted(found, key=str)
    if GLOB_CHARS & set(spec):
        found = [Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
        if not found:
            raise LstmgenError(f"no file matches the corpus pattern {spec} (check the pattern; quote it so the shell"
                               " does not expand it)")
        return sorted(found, key=str)
    raise LstmgenError(f"corpus file not found: {spec} (check the path)")


def stream_text(spec: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The corpus's text with newlines normalised, in pieces that end at a line break (but for the
    last, and a line longer than 4 chunks, which is cut). "".join of it equals `read_corpus(spec)`."""
    files = corpus_files(spec)
    seen_text = False
    ends_line = True
    for i, path in enumerate(files):
        if i and not ends_line:
            yield "\n"
        for piece in _file_pieces(path, chunk_bytes):
            seen_text = seen_text or bool(piece.strip())
            ends_line = piece.endswith("\n")
            yield piece
    if not seen_text:
        where = files[0] if len(files) == 1 else spec
        raise LstmgenError(f"corpus file is empty: {where} (give a file with text in it)")


def _file_pieces(path: Path, chunk_bytes: int) -> Iterator[str]:
    """One file's text, decoded incrementally (a BOM dropped), newlines normalised, cut at line breaks."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending, offset = "", 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            if b"\x00" in raw:
                raise LstmgenError(f"corpus file looks binary (it holds NUL bytes): {path} (give a UTF-8 text file)")
            try:
                text = pending + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise LstmgenError(f"corpus file is not UTF-8: {path} (byte {offset + e.start} is invalid; convert it,"
                                   " e.g. with iconv -t utf-8)") from None
            offset += len(raw)
            hold = "\r" if raw and text.endswith("\r") else ""  # may be the first half of a \r\n
            text = (text[:-1] if hold else text).replace("\r\n", "\n").replace("\r", "\n")
            cut = text.rfind("\n") + 1 if raw else len(text)
            if raw and cut == 0 and len(text) > 4 * chunk_bytes:
                cut = len(text)  # a line longer than 4 chunks: cut it rather than hold it all
            if cut:
                yield text[:cut]
            pending = text[cut:] + hold
            if not raw:
                return


def read_corpus(spec: str | os.PathLike) -> str:
    """The whole corpus (a file, a folder or a glob) as one string: `stream_text` joined."""
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return read_text(spec)
    return "".join(stream_text(spec))



def read_text(path: str | os.PathLike) -> str:
    """Return the file's text with newlines normalised to '\\n', or raise a clear LstmgenError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LstmgenError(f"text file not found: {path} (check the path)")
    if os.path.isdir(path):
        raise LstmgenError(f"{path} is a directory, not a file (name a .txt or .csv file)")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise LstmgenError(f"text file is empty: {path} (give a file with text in it)")
    if b"\x00" in raw:
        raise LstmgenError(f"{path} looks binary (it holds NUL bytes): give a UTF-8 text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LstmgenError(
            f"text file is not UTF-8: {path} (byte {e.start} is invalid; convert it, e.g. with iconv -t utf-8)"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_records(text: str, *, csv_format: bool = False, column: int | str = 0, source: str = "corpus",
                  min_records: int = 2) -> list[str]:
    """Split text into records: one per non-empty line, or one per CSV row (the given column)."""
    if csv_format:
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        if not rows:
            raise LstmgenError(f"{source} has no CSV rows")
        index = column
        if isinstance(column, str) and not column.isdigit():
            header = [h.strip() for h in rows[0]]
            if column not in header:
                raise LstmgenError(f"{source} has no CSV column named {column!r} (columns: {', '.join(header)})")
            index, rows = header.index(column), rows[1:]
        index = int(index)
        if any(len(r) <= index for r in rows):
            raise LstmgenError(f"{source}: some CSV rows have no column {index} (pick one with --column)")
        records = [r[index].strip() for r in rows]
    else:
        records = [line.strip() for line in text.split("\n")]
    records = [r for r in records if r]
    if len(records) < min_records:
        raise LstmgenError(
            f"{source} holds {len(records)} record(s); records mode needs at least {min_records} (one item a line),"
            " or use it as running text without --records"
        )
    return records


def read_records(path: str | os.PathLike, *, column: int | str = 0) -> list[str]:
    """Records from a TXT (one a line) or CSV file (one column, by index or header name)."""
    path = os.fspath(path)
    return parse_records(read_text(path), csv_format=path.lower().endswith(".csv"), column=column, source=path)
