"""Reading corpora from disk with clear errors: running text, or records (one item a line, TXT or CSV).

Shared by the trainer (training data) and the engine (`lstmgen score`), so both read a file the same way.
Which part of a corpus is validation is the trainer's policy: lstmgen.trainer.splits.
"""

from __future__ import annotations

import csv
import io
import os

from .errors import LstmgenError



def read_text(path: str | os.PathLike) -> str:
    """Return the file's text with newlines normalised to '\\n', or raise a clear LstmgenError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LstmgenError(f"corpus file not found: {path} (check the path)")
    if os.path.isdir(path):
        raise LstmgenError(f"corpus path is a directory, not a file: {path} (name a .txt or .csv file)")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise LstmgenError(f"corpus file is empty: {path} (give a file with text in it)")
    if b"\x00" in raw:
        raise LstmgenError(f"corpus file looks binary (it holds NUL bytes): {path} (give a UTF-8 text file)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LstmgenError(
            f"corpus file is not UTF-8: {path} (byte {e.start} is invalid; convert it, e.g. with iconv -t utf-8)"
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
