"""Corpus -> tokenizer -> batches. NumPy only, so batching is testable without torch.

Running text is cut into `batch_size` contiguous streams read in windows of `seq_len` tokens
(truncated BPTT: the trainer carries the LSTM state from one window to the next). Records are
independent sequences `<eos> item <eos>`, shuffled per epoch by (seed, epoch) and padded per batch;
padded targets are IGNORE so they count for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmgen.corpus import parse_records, read_text

from .splits import split_records, split_text
from lstmgen.errors import LstmgenError
from lstmgen.tokenizer import Tokenizer

from .config import DataConfig

IGNORE = -100  # target id that the loss skips (torch's default ignore_index)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    records: bool
    train: np.ndarray | list[np.ndarray]  # text: int64 ids; records: one array per record, <eos> both ends
    val: np.ndarray | list[np.ndarray]
    val_text: str  # the validation split as text (records: one per line), for export-time scoring
    all_records: list[str] | None  # every record of the corpus (for the artifact's novelty check)
    start_ids: list[int]  # what generation feeds before a prompt


def prepare(cfg: DataConfig, text: str | None = None, base_tokenizer: Tokenizer | None = None) -> PreparedData:
    """Read the corpus named in cfg (or use `text`), split it, build the tokenizer and encode.

    With `base_tokenizer` (fine-tuning), the vocabulary is that one, extended at the end by what is
    new in this corpus, so the ids of the model being fine-tuned keep their meaning."""
    source = cfg.corpus or "corpus"
    if text is None:
        text = read_text(cfg.corpus)
    if cfg.records:
        records = parse_records(text, csv_format=cfg.corpus.lower().endswith(".csv"), column=cfg.column,
                                source=source)
        train_r, val_r = split_records(records)
        tok = Tokenizer.build(cfg.level, train_r, records=True, min_count=cfg.min_count, lowercase=cfg.lowercase,
                              extra_texts=val_r)
        tok = base_tokenizer.extended(tok) if base_tokenizer is not None else tok
        enc = lambda r: np.array([tok.eos_id, *tok.encode(r), tok.eos_id], dtype=np.int64)  # noqa: E731
        return PreparedData(tok, True, [enc(r) for r in train_r], [enc(r) for r in val_r], "\n".join(val_r) + "\n",
                            records, [tok.eos_id])
    train_t, val_t = split_text(text)
    tok = Tokenizer.build(cfg.level, [train_t], records=False, min_count=cfg.min_count, lowercase=cfg.lowercase,
                          extra_texts=[val_t])
    tok = base_tokenizer.extended(tok) if base_tokenizer is not None else tok
    train_ids = np.array(tok.encode(train_t), dtype=np.int64)
    val_ids = np.array(tok.encode(val_t), dtype=np.int64)
    if len(train_ids) < 4 or len(val_ids) < 2:
        raise LstmgenError(f"{source} is too short to train on ({len(train_ids) + len(val_ids)} tokens); give more text")
    newline = tok.index.get("\n")
    return PreparedData(tok, False, train_ids, val_ids, val_t, None,
                        [newline if newline is not None else int(train_ids[0])])


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
        self.streams = ids[: per_stream * batch_size].reshape(batch_size, per_stream)[rank * share: (rank + 1) * share]
        self.seq_len = min(seq_len, per_stream - 1)
        self.steps_per_epoch = (per_stream - 1) // self.seq_len

    def batch(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets [B, T]; window i follows window i-1 in every stream."""
        a = i * self.seq_len
        return self.streams[:, a: a + self.seq_len], self.streams[:, a + 1: a + self.seq_len + 1]


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
        picked = [self.seqs[j] for j in self._order[i * self.batch_size: (i + 1) * self.batch_size]]
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
