"""The counter-based generator (lstmgen.rng): an independent plain-int implementation, ranges, independence."""

import numpy as np

from lstmgen import rng
from lstmgen.sampling import RowRandom

MASK = 0xFFFFFFFF


def fmix32_int(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & MASK
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & MASK
    return x ^ (x >> 16)


def uniform_int(seed: int, row: int, step: int) -> float:
    seed_key = fmix32_int(fmix32_int((seed & MASK) ^ 0x9E3779B9) ^ (seed >> 32))
    key = fmix32_int(((seed_key + (row >> 32) * 0x9E3779B1) & MASK) ^ (row & MASK))
    return fmix32_int(key ^ step) / 2**32


def test_vectorised_hash_equals_plain_integer_arithmetic():
    for seed in (0, 1, 7, 2**32 - 1, 2**32, 2**62 + 12345):
        rows = [0, 1, 5, 1000, 2**32, 2**32 + 5, 7 * 2**32 + 1]  # high words: the rows of later prompts
        keys = rng.row_keys(seed, rows)
        for step in (0, 1, 255, 99_999):
            got = rng.uniforms(keys, step)
            assert got.tolist() == [uniform_int(seed, r, step) for r in rows]


def test_rows_of_different_prompts_never_share_a_key():
    """Prompt i of a several-prompt request uses rows i * 2**32 + j: no two of them may collide."""
    rows = [i * 2**32 + j for i in range(64) for j in range(256)]
    assert len(set(rng.row_keys(12345, rows).tolist())) == len(rows)


def test_uniforms_are_in_range_and_look_uniform():
    r = RowRandom(3, range(64))
    u = np.stack([r.next() for _ in range(500)])  # [steps, rows]
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = u.size / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50, chi2  # 19 degrees of freedom: p < 1e-4 above ~45
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.03  # consecutive steps
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.03  # neighbouring rows


def test_every_part_of_the_seed_matters():
    base = RowRandom(5, range(4)).next()
    for other in (6, 5 + 2**32, 5 + 2**40):
        assert not np.array_equal(base, RowRandom(other, range(4)).next())


def test_row_random_hashes_blocks_of_steps_that_equal_one_step_at_a_time():
    rows = [0, 3, 2**32 + 1]
    r = RowRandom(5, rows)
    steps = 2 * RowRandom.BLOCK + 7  # across two block boundaries
    got = np.stack([r.next() for _ in range(steps)], axis=1)
    keys = rng.row_keys(5, rows)
    assert np.array_equal(got, np.stack([rng.uniforms(keys, s) for s in range(steps)], axis=1))
