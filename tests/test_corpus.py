"""Reading corpora: bad input gets one clear error; splits are deterministic and 10%."""

from __future__ import annotations

import pytest

from lstmgen.corpus import read_records, read_text
from lstmgen.errors import LstmgenError
from lstmgen.trainer.splits import split_records, split_text

from .conftest import corpus_path


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "missing.txt", "not found"),
    (lambda d: d, "directory"),
    (lambda d: _write(d / "empty.txt", b"  \n\n"), "empty"),
    (lambda d: _write(d / "bin.dat", b"\x00\x01\x02abc"), "binary"),
    (lambda d: _write(d / "latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1")), "not UTF-8"),
])
def test_bad_corpus_files_give_clear_errors(tmp_path, make, match):
    with pytest.raises(LstmgenError, match=match) as e:
        read_text(make(tmp_path))
    assert "\n" not in str(e.value)


def test_records_file_with_one_record_is_refused(tmp_path):
    with pytest.raises(LstmgenError, match="at least 2"):
        read_records(_write(tmp_path / "one.txt", b"emma\n"))


def test_csv_records_by_index_and_header(tmp_path):
    p = _write(tmp_path / "cities.csv", b"city,country\nparis,fr\nlyon,fr\nberlin,de\n")
    assert read_records(p, column="city") == ["paris", "lyon", "berlin"]
    assert read_records(p, column="1")[1:] == ["fr", "fr", "de"]
    with pytest.raises(LstmgenError, match="no CSV column named 'town'"):
        read_records(p, column="town")


def test_text_split_is_last_ten_percent():
    text = corpus_path("tinyshakespeare.txt").read_text()
    train, val = split_text(text)
    assert train + val == text
    assert len(val) == len(text) - int(len(text) * 0.9)


def test_record_split_is_seeded_and_ten_percent():
    records = read_records(corpus_path("names.txt"))
    train, val = split_records(records)
    assert (train, val) == split_records(records)
    assert len(val) == round(len(records) * 0.1)
    assert sorted(train + val) == sorted(records)


def _write(p, data: bytes):
    p.write_bytes(data)
    return p
