"""The data path for corpora of any size: the streaming prepare pass equals the in-memory reference id
for id, batches from the memory-mapped files equal batches from arrays, training steps on them are
bit-identical, prepared data is reused on resume, folders and globs are corpora in a documented order."""

from __future__ import annotations

import numpy as np
import pytest

from lstmgen.corpus import corpus_files, read_corpus, stream_text
from lstmgen.errors import LstmgenError

from .conftest import needs_torch, tiny_config


def _cfg(corpus, level="char", records=False):
    from lstmgen.trainer.config import DataConfig

    return DataConfig(corpus=str(corpus), level=level, records=records, min_count=2 if level == "word" else 1)


def _same(a, b):
    """Two prepared datasets hold the same vocabulary, ids, validation sample and start ids."""
    assert a.tokenizer.tokens == b.tokenizer.tokens and a.start_ids == b.start_ids and a.val_text == b.val_text
    if a.records:
        assert len(a.train) == len(b.train) and len(a.val) == len(b.val)
        assert all(np.array_equal(x, y) for x, y in zip(a.train, b.train))
        assert all(np.array_equal(x, y) for x, y in zip(a.val, b.val))
        assert np.array_equal(a.record_hashes, b.record_hashes)
    else:
        assert np.array_equal(np.asarray(a.train), np.asarray(b.train)) and np.array_equal(a.val, b.val)
    assert np.array_equal(a.token_counts, b.token_counts)


@pytest.mark.parametrize("corpus, level, records", [("names", "char", True), ("shakespeare", "char", False),
                                                     ("moe", "word", False), ("names", "word", True)])
def test_streaming_prepare_equals_the_in_memory_path(small_corpora, tmp_path, corpus, level, records):
    from lstmgen.trainer.data import prepare
    from lstmgen.trainer.prepare import prepare_on_disk, token_dtype

    cfg = _cfg(small_corpora[corpus], level, records)
    memory = prepare(cfg, val_sample_chars=200)
    # 97-byte reads: every chunk boundary, the train/validation cut inside a chunk, lines across reads
    disk = prepare_on_disk(cfg, tmp_path / "data", val_sample_chars=200, chunk_bytes=97, log=lambda m: None)
    _same(memory, disk)
    ids = disk.train.ids if records else disk.train
    assert isinstance(ids, np.memmap) and ids.dtype == token_dtype(disk.tokenizer.vocab_size)
    assert 200 <= len(disk.val_text) <= 200 + (20 if records else 0)  # the bounded sample (records: whole ones)
    whole = (tmp_path / "data" / "val.txt").read_text(encoding="utf-8")
    assert whole.startswith(disk.val_text) and len(whole) > len(disk.val_text)  # export scores all of it


def test_token_type_follows_the_vocabulary_size():
    from lstmgen.trainer.prepare import token_dtype

    assert [token_dtype(n) for n in (27, 256, 257, 65536, 65537)] == [np.uint8, np.uint8, np.uint16, np.uint16,
                                                                      np.uint32]


def test_prepared_data_is_reused_while_the_corpus_is_unchanged(small_corpora, tmp_path):
    from lstmgen.trainer.prepare import prepare_on_disk

    corpus = tmp_path / "c.txt"
    corpus.write_text(small_corpora["shakespeare"].read_text()[:5000])
    lines = []
    prepare_on_disk(_cfg(corpus), tmp_path / "data", log=lines.append)
    prepare_on_disk(_cfg(corpus), tmp_path / "data", log=lines.append)
    assert sum(line.startswith("prepared") for line in lines) == 1
    corpus.write_text(small_corpora["shakespeare"].read_text()[:6000])
    again = prepare_on_disk(_cfg(corpus), tmp_path / "data", log=lines.append)
    assert "changed since" in lines[-2] and lines[-1].startswith("prepared") and len(again.train) == 5400
    assert not list(tmp_path.glob(".data*")), "the temporary folder is renamed into place"


@needs_torch
@pytest.mark.parametrize("corpus, records", [("shakespeare", False), ("names", True)])
def test_memmap_batches_and_first_steps_are_bit_identical_to_arrays(small_corpora, tmp_path, corpus, records):
    import torch

    from lstmgen.trainer.data import RecordBatches, StreamBatches, prepare
    from lstmgen.trainer.train import Trainer

    cfg = tiny_config(small_corpora[corpus], records=records, max_steps=3)
    on_disk = Trainer(cfg, tmp_path / "disk", log=lambda m: None)
    in_memory = Trainer(tiny_config(small_corpora[corpus], records=records, max_steps=3), tmp_path / "mem",
                        log=lambda m: None)
    data = prepare(cfg.data, val_sample_chars=cfg.data.val_sample_chars)
    t = cfg.train
    in_memory.data = data
    in_memory.batches = (RecordBatches(data.train, t.batch_size, t.seed, data.tokenizer.eos_id) if records
                         else StreamBatches(data.train, t.batch_size, t.seq_len))
    for epoch, i in [(0, 0), (0, 1), (1, 2)]:
        for a, b in zip(on_disk.batches.batch(epoch, i), in_memory.batches.batch(epoch, i)):
            assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)
    rng = torch.get_rng_state()  # the same dropout masks for both
    first = [on_disk.train_step() for _ in range(3)]
    torch.set_rng_state(rng)
    assert first == [in_memory.train_step() for _ in range(3)]
    for k, v in on_disk.model.state_dict().items():
        assert torch.equal(v, in_memory.model.state_dict()[k]), k
    from lstmgen.trainer.train import evaluate

    scores = [evaluate(t.model, t.data, cfg.train.eval_segments, t.device) for t in (on_disk, in_memory)]
    assert scores[0] == scores[1]


def test_each_rank_maps_only_its_rows_of_the_streams():
    from lstmgen.trainer.data import StreamBatches

    ids = np.arange(1000) % 251
    whole = StreamBatches(ids, batch_size=8, seq_len=10)
    for rank in (0, 1):
        mine = StreamBatches(ids, batch_size=8, seq_len=10, rank=rank, world=2)
        assert mine.streams.base is not None and mine.streams.shape == (4, 125)  # a view, not a copy
        for a, b in zip(mine.batch(0, 3), whole.batch(0, 3)):
            assert np.array_equal(a, b[rank * 4: rank * 4 + 4])


# ---- folders and globs -----------------------------------------------------------------------------

def _tree(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("bravo\ncharlie")  # no final line break: one is put before the next file
    (d / "a.txt").write_text("alpha\n")
    (d / "sub" / "c.txt").write_text("\ndelta\n")
    (d / ".hidden.txt").write_text("never\n")
    return d


def test_a_folder_is_its_files_sorted_by_path_hidden_ones_left_out(tmp_path):
    d = _tree(tmp_path)
    assert [p.relative_to(d).as_posix() for p in corpus_files(d)] == ["a.txt", "b.txt", "sub/c.txt"]
    assert read_corpus(d) == "alpha\nbravo\ncharlie\n\ndelta\n"
    assert "".join(stream_text(d, chunk_bytes=3)) == read_corpus(d)
    assert read_corpus(str(d / "*.txt")) == "alpha\nbravo\ncharlie"
    assert read_corpus(str(d / "**" / "*.txt")) == read_corpus(d)
    with pytest.raises(LstmgenError, match="no file matches"):
        corpus_files(str(d / "*.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LstmgenError, match="holds no files"):
        corpus_files(tmp_path / "empty")


def test_records_of_a_folder_are_the_lines_of_each_file(tmp_path):
    from lstmgen.trainer.data import prepare
    from lstmgen.trainer.prepare import prepare_on_disk

    d = _tree(tmp_path)
    cfg = _cfg(d, records=True)
    disk = prepare_on_disk(cfg, tmp_path / "data", log=lambda m: None)
    _same(prepare(cfg), disk)
    words = {disk.tokenizer.decode(r) for r in [*disk.train, *disk.val]}
    assert words == {"alpha", "bravo", "charlie", "delta"}


@needs_torch
def test_training_on_a_folder(tmp_path, small_corpora):
    from lstmgen.trainer.train import train

    d = tmp_path / "plays"
    d.mkdir()
    text = small_corpora["shakespeare"].read_text()
    for i in range(4):
        (d / f"part{i}.txt").write_text(text[i * 5000: (i + 1) * 5000])
    result = train(tiny_config(d, max_steps=4, eval_every=2), tmp_path / "run", progress=False, log=lambda m: None)
    chars = len(read_corpus(d))
    assert chars == 20003  # three line breaks put between the four files
    assert result.step == 4 and (tmp_path / "run" / "data" / "train.bin").stat().st_size == int(chars * 0.9)
