"""The Numba sampler against its NumPy reference, the distribution it samples, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lstmgen.errors import LstmgenError
from lstmgen.sampling import RowRandom, SamplingParams, sample_rows, sample_rows_reference

PARAMS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=40),
    SamplingParams(temperature=0.9, top_p=0.9),
    SamplingParams(temperature=0.8, top_k=40, top_p=0.9),
    SamplingParams(temperature=1.2, min_p=0.05),
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0, top_k=1),
    SamplingParams(temperature=0.6, top_p=0.5, repetition_penalty=1.5, repetition_window=8),
    SamplingParams(temperature=1.0, top_k=5000, top_p=0.95, min_p=0.01),
]


@pytest.mark.parametrize("params", PARAMS, ids=str)
@pytest.mark.parametrize("vocab", [7, 300, 10000])
def test_kernel_matches_reference(params, vocab):
    rng = np.random.default_rng(vocab)
    logits = (rng.standard_normal((64, vocab)) * 3).astype(np.float32)
    uniforms = rng.random(64)
    history = rng.integers(-1, vocab, (64, 8))
    got = sample_rows(logits, uniforms, params, history)
    want = sample_rows_reference(logits, uniforms, params, history)
    assert np.array_equal(got, want)
    assert np.array_equal(sample_rows(logits, uniforms, params, history, threads=2), want)


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token outside the allowed support"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum())


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.5, top_k=4),
                                    SamplingParams(temperature=1.0, top_p=0.8)], ids=str)
def test_sampled_frequencies_match_the_intended_distribution(params):
    logits = np.log(np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05], dtype=np.float64))
    p = np.exp(logits / params.temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, dtype=bool)
    if params.top_k:
        keep[order[: params.top_k]] = True
    elif params.top_p < 1:
        cum = np.cumsum(p[order])
        keep[order[: int(np.searchsorted(cum, params.top_p)) + 1]] = True
    else:
        keep[:] = True
    target = np.where(keep, p, 0)
    target /= target.sum()
    n = 200_000
    rows = np.repeat(logits[None].astype(np.float32), n, axis=0)
    drawn = sample_rows(rows, np.random.default_rng(5).random(n), params)
    chi2, k = _chi_square(np.bincount(drawn, minlength=len(p)), target)
    # 99.9% quantile of chi-square with up to 6 degrees of freedom is 22.5
    assert chi2 < 22.5, (chi2, k)


def test_edge_cases():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((16, 50)).astype(np.float32)
    u = rng.random(16)
    argmax = logits.argmax(axis=1)
    assert np.array_equal(sample_rows(logits, u, SamplingParams(temperature=0.0)), argmax)
    assert np.array_equal(sample_rows(logits, u, SamplingParams(temperature=1.0, top_k=1)), argmax)
    assert np.array_equal(sample_rows(logits, u, SamplingParams(temperature=1e-6)), argmax)
    assert np.array_equal(sample_rows(logits, u, SamplingParams(temperature=1.0, top_p=1e-9)), argmax)
    big_k = sample_rows(logits, u, SamplingParams(temperature=1.0, top_k=10_000))
    assert np.array_equal(big_k, sample_rows(logits, u, SamplingParams(temperature=1.0)))
    masked = logits.copy()
    masked[:, 1:] = -np.inf
    assert (sample_rows(masked, u, SamplingParams(temperature=1.0, top_p=0.5)) == 0).all()


@pytest.mark.parametrize("bad, match", [(np.nan, "NaN"), (-np.inf, "-inf")])
def test_broken_logits_give_a_clear_error(bad, match):
    logits = np.zeros((3, 10), dtype=np.float32)
    logits[1, :] = bad
    for params in (SamplingParams(), SamplingParams(top_k=3), SamplingParams(temperature=0)):
        with pytest.raises(LstmgenError, match=match):
            sample_rows(logits, np.full(3, 0.5), params)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_k=-2),
                                    dict(top_p=0.0), dict(top_p=1.5), dict(min_p=1.0), dict(repetition_penalty=0.5),
                                    dict(repetition_window=0), dict(top_k=2.5)])
def test_parameter_ranges_are_validated(kwargs):
    with pytest.raises(LstmgenError):
        SamplingParams(**kwargs)


def test_row_draws_depend_only_on_seed_and_row():
    alone = RowRandom(7, [5])
    batch = RowRandom(7, range(8))
    for _ in range(300):  # crosses a block boundary
        assert alone.next()[0] == batch.next()[5]


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 40)),
                  elements=st.floats(-1e4, 1e4, width=32)),
       st.floats(0.05, 3.0), st.integers(0, 50), st.floats(0.01, 1.0), st.floats(0, 0.99))
def test_always_a_valid_index_inside_the_support(logits, temperature, top_k, top_p, min_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    u = np.random.default_rng(0).random(logits.shape[0])
    got = sample_rows(logits, u, params)
    assert ((got >= 0) & (got < logits.shape[1])).all()
    for row, tok in zip(logits, got):
        if top_k:
            # inside the top-k: fewer than k tokens are strictly more likely
            assert (row > row[tok]).sum() < top_k
        assert row[tok] >= row.max() + temperature * np.log(max(min_p, 1e-300)) - 1e-3 * abs(row.max()) - 1e-3
