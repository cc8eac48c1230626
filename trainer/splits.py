"""The validation split of a corpus, as ../shared/data/SOURCES.md fixes it (torch-free).

Training, export's scoring, the models page and the shipped-model tests all hold out the same part
of a corpus, so their figures are comparable.
"""

from __future__ import annotations

import random

VALIDATION_FRACTION = 0.1  # fixed by ../shared/data/SOURCES.md so that figures are comparable
RECORD_SPLIT_SEED = 1234  # the seeded 10% of records held out; one value so every run splits alike


def split_text(text: str) -> tuple[str, str]:
    """Running text: the last 10% by characters is validation."""
    cut = int(len(text) * (1 - VALIDATION_FRACTION))
    return text[:cut], text[cut:]


def split_records(records: list[str]) -> tuple[list[str], list[str]]:
    """Records: a seeded random 10% of them is validation (at least one), in their original order."""
    n_val = max(1, int(round(len(records) * VALIDATION_FRACTION)))
    picked = set(random.Random(RECORD_SPLIT_SEED).sample(range(len(records)), n_val))
    train = [r for i, r in enumerate(records) if i not in picked]
    val = [r for i, r in enumerate(records) if i in picked]
    return train, val
