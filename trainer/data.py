"""Corpus -> tokenizer -> batches. NumPy only, so batching is testable without torch.

Running text is cut into `batch_size` contiguous streams read in windows of `seq_len` tokens
(truncated BPTT: the trainer carries the LSTM state from one window to the next). Records are
independent sequences `<eos> item <eos>`, shuffled per epoch by (seed, epoch) and padded per batch;
padded targets are IGNORE so they count for nothing.

Training reads what the streaming prepare pass (prepare.py) wrote to the run folder, memory-mapped.
`prepare` here is the same preparation in memory, in a few lines: the reference that the streaming
pass must equal id for id (tests/test_data_path.py), and handy for small texts in tests.

Validation during training scores a bounded sample (`val_sample`): the first `val_sample_chars`
characters of the validation split (records: its first records up to that many characters), so a
large corpus does not spend minutes per evaluation. The whole split (up to prepare.FINAL_VAL_CHARS)
is in RUN/val.txt, which `lstmgen export` scores for the artifact's figure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmgen.corpus import corpus_files, parse_records, read_corpus, read_text
from lstmgen.errors import LstmgenError
from lstmgen.manifest import record_hashes
from lstmgen.tokenizer import Tokenizer

from .config import DataConfig
from .splits import split_records, split_text

IGNORE = -100  # target id that the loss skips (torch's default ignore_index)


class RecordSet:
    """Records kept as one id stream with shared end markers (prepare.py draws it): record i is
    ids[offsets[i] : offsets[i+1] + 1], an int64 array `<eos> item <eos>`, as a list of arrays holds it."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self.ids, self.offsets = ids, offsets

    def __len__(self) -> int:
        return max(0, len(self.offsets) - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return np.asarray(self.ids[self.offsets[i]: self.offsets[i + 1] + 1], dtype=np.int64)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    records: bool
    train: np.ndarray | list[np.ndarray] | RecordSet  # text: ids (memmap); records: `<eos> item <eos>` each
    val: np.ndarray | list[np.ndarray]  # the in-training validation sample (val_sample), int64, in memory
    val_text: str  # the sample as text (records: one per line); word models count its characters
    record_hashes: np.ndarray | None  # records: hashes of every corpus record (the artifact's novelty check)
    start_ids: list[int]  # what generation feeds before a prompt
    token_counts: np.ndarray | None = None  # how often each token occurs (fine-tuning sizes new tokens by it)
    val_path: Path | None = None  # the whole validation split as text (export's figure); None: it is val_text


def training_tokens(train) -> int:
    """Tokens one pass over the training split predicts (records: each one's characters and its end)."""
    if isinstance(train, RecordSet):
        return max(0, len(train.ids) - 1)  # shared end markers: all but the first <eos> are predicted
    if isinstance(train, list):
        return sum(len(r) - 1 for r in train)
    return len(train)


def val_sample(val, val_text: str, records: bool, tok: Tokenizer, chars: int):
    """The validation sample that training scores: the split's first `chars` characters (0 = all of
    it). Records: whole records, the first ones up to `chars` characters. Returns (ids, text)."""
    if records:
        lines = val_text.split("\n")[:-1]  # one line per record, in order (the text ends with a line break)
        n, total = 0, 0
        while n < min(len(lines), len(val)) and (not chars or total < chars):
            total += len(lines[n]) + 1
            n += 1
        return [np.asarray(val[i], dtype=np.int64) for i in range(n)], "".join(line + "\n" for line in lines[:n])
    if not chars or len(val_text) <= chars:
        return np.asarray(val, dtype=np.int64), val_text
    text = val_text[:chars]
    if tok.level == "char":
        return np.asarray(val[:chars], dtype=np.int64), text
    return np.array(tok.encode(text), dtype=np.int64), text


def prepare(cfg: DataConfig, text: str | None = None, base_tokenizer: Tokenizer | None = None,
            val_sample_chars: int = 0) -> PreparedData:
    """Read the corpus named in cfg (or use `text`), split it, build the tokenizer and encode, in memory.

    With `base_tokenizer` (fine-tuning), the vocabulary is that one, extended at the end by what is
    new in this corpus, so the ids of the model being fine-tuned keep their meaning."""
    source = cfg.corpus or "corpus"
    if cfg.records:
        if text is None:
            records = [r for p in corpus_files(cfg.corpus)
                       for r in parse_records(read_text(p), csv_format=p.suffix.lower() == ".csv", column=cfg.column,
                                              source=str(p), min_records=0)]
            records = parse_records("\n".join(records), source=source)
        else:
            records = parse_records(text, csv_format=cfg.corpus.lower().endswith(".csv"), column=cfg.column,
                                    source=source)
        train_r, val_r = split_records(records)
        tok = Tokenizer.build(cfg.level, train_r, records=True, min_count=cfg.min_count, lowercase=cfg.lowercase,
                              extra_texts=val_r)
        tok = base_tokenizer.extended(tok) if base_tokenizer is not None else tok
        enc = lambda r: np.array([tok.eos_id, *tok.encode(r), tok.eos_id], dtype=np.int64)  # noqa: E731
        val, val_text = val_sample([enc(r) for r in val_r], "\n".join(val_r) + "\n", True, tok, val_sample_chars)
        return PreparedData(tok, True, [enc(r) for r in train_r], val, val_text, record_hashes(records),
                            [tok.eos_id], _counts(tok, records if tok.level == "char" else train_r))
    text = read_corpus(cfg.corpus) if text is None else text
    train_t, val_t = split_text(text)
    tok = Tokenizer.build(cfg.level, [train_t], records=False, min_count=cfg.min_count, lowercase=cfg.lowercase,
                          extra_texts=[val_t])
    tok = base_tokenizer.extended(tok) if base_tokenizer is not None else tok
    train_ids = np.array(tok.encode(train_t), dtype=np.int64)
    val_ids = np.array(tok.encode(val_t), dtype=np.int64)
    if len(train_ids) < 4 or len(val_ids) < 2:
        raise LstmgenError(f"{source} is too short to train on ({len(train_ids) + len(val_ids)} tokens); give more text")
    newline = tok.index.get("\n")
    val, val_text = val_sample(val_ids, val_t, False, tok, val_sample_chars)
    return PreparedData(tok, False, train_ids, val, val_text, None, [newline if newline is not None else int(train_ids[0])],
                        _counts(tok, [text] if tok.level == "char" else [train_t]))


def _counts(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(t if tok.level == "char" else tok.pieces(t))
    return np.array([counts.get(t, 0) for t in tok.tokens], dtype=np.int64)


class StreamBatches:
    """Running text as `batch_size` parallel streams, read `seq_len` tokens at a time.

    With several processes, rank r of `world` reads its own contiguous block of the streams.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world: int = 1) -> None:
        per_stream = len(ids) // batch_size
        if per_stream < 2:
            raise LstmgenError(f"the training text ({len(ids)} tokens) is too short for --batch-size {batch_size};"
                               " lower --batch-size")
        share = batch_size // world
        # This rank's rows are one contiguous stretch of the ids: a memmap maps (pages in) only that.
        mine = ids[rank * share * per_stream: (rank + 1) * share * per_stream]
        self.streams = mine.reshape(share, per_stream)
        self.seq_len = min(seq_len, per_stream - 1)
        self.steps_per_epoch = (per_stream - 1) // self.seq_len

    def batch(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets [B, T] as int64; window i follows window i-1 in every stream."""
        a = i * self.seq_len
        window = np.asarray(self.streams[:, a: a + self.seq_len + 1], dtype=np.int64)
        return window[:, :-1], window[:, 1:]


class RecordBatches:
    """Records shuffled by (seed, epoch), padded to the longest in each batch.

    With several processes, every rank draws the same global batch and keeps rows rank::world.
    """

    def __init__(self, seqs: list[np.ndarray], batch_size: int, seed: int, pad_id: int, rank: int = 0,
                 world: int = 1) -> None:
        self.seqs = seqs
        self.batch_size = min(batch_size, len(seqs))
        self.seed = seed
        self.pad_id = pad_id
        self.rank, self.world = rank, world
        self.steps_per_epoch = -(-len(seqs) // self.batch_size)
        self._order_epoch = -1
        self._order = np.arange(len(seqs))

    def batch(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.seqs))
            self._order_epoch = epoch
        picked = [self.seqs[int(j)] for j in self._order[i * self.batch_size: (i + 1) * self.batch_size]]
        mine = picked[self.rank:: self.world]
        if not mine:  # a short last batch left this rank nothing: a row that counts for nothing keeps ranks in step
            return np.full((1, 1), self.pad_id, dtype=np.int64), np.full((1, 1), IGNORE, dtype=np.int64)
        return pad_records(mine, self.pad_id)


def pad_records(seqs: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[<eos> a b <eos>] -> inputs [<eos> a b], targets [a b <eos>], padded to the longest."""
    T = max(len(s) for s in seqs) - 1
    x = np.full((len(seqs), T), pad_id, dtype=np.int64)
    y = np.full((len(seqs), T), IGNORE, dtype=np.int64)
    for r, s in enumerate(seqs):
        x[r, : len(s) - 1] = s[:-1]
        y[r, : len(s) - 1] = s[1:]
    return x, y
