"""Micro-benchmarks (pytest-benchmark): `pytest bench --benchmark-only`.

The sampler at batch 64, vocabulary 10k (top-k 40, and top-p 0.9): Numba kernel, NumPy reference,
PyTorch; and one engine step of the medium char model at batch 1 and 64.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lstmgen.sampling import SamplingParams, sample_rows, sample_rows_reference

B, V = 64, 10_000
SETTINGS = {"top-k 40": SamplingParams(temperature=0.8, top_k=40), "top-p 0.9": SamplingParams(temperature=0.8, top_p=0.9)}


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, V)) * 3).astype(np.float32), rng.random(B)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("setting", SETTINGS)
def test_sampler_numba(benchmark, logits, setting, threads):
    x, u = logits
    sample_rows(x, u, SETTINGS[setting], threads=threads)  # compile or load the cache outside the timing
    benchmark.group = f"sampler {setting}, batch {B}, vocab {V}"
    benchmark(sample_rows, x, u, SETTINGS[setting], threads=threads)


@pytest.mark.parametrize("setting", SETTINGS)
def test_sampler_numpy_reference(benchmark, logits, setting):
    x, u = logits
    benchmark.group = f"sampler {setting}, batch {B}, vocab {V}"
    benchmark(sample_rows_reference, x, u, SETTINGS[setting])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("setting", SETTINGS)
def test_sampler_torch(benchmark, logits, setting):
    import torch

    x = torch.from_numpy(logits[0])
    p = SETTINGS[setting]

    def sample():
        scaled = x / p.temperature
        if p.top_k:
            v, i = torch.topk(scaled, p.top_k, dim=-1)
            return i.gather(1, torch.multinomial(torch.softmax(v, -1), 1))
        probs = torch.softmax(scaled, -1)
        sp, si = torch.sort(probs, descending=True, dim=-1)
        sp[(sp.cumsum(-1) - sp) > p.top_p] = 0
        return si.gather(1, torch.multinomial(sp, 1))

    benchmark.group = f"sampler {setting}, batch {B}, vocab {V}"
    with torch.inference_mode():
        benchmark(sample)


@pytest.fixture(scope="module")
def medium_engine(tmp_path_factory):
    from lstmgen import Generator
    from lstmgen.bench.models import SPECS, random_weights, write_artifact

    spec = SPECS["char-medium"]
    return Generator.load(write_artifact(tmp_path_factory.mktemp("m"), spec, random_weights(spec)), device="cpu")


@pytest.mark.parametrize("batch", [1, 64])
def test_engine_step(benchmark, medium_engine, batch):
    backend = medium_engine.backend
    _, state = backend.prefill(np.zeros((1, 1), np.int64))
    state = backend.expand(state, batch)
    tokens = np.zeros(batch, np.int64)
    logits, state = backend.step(tokens, state)
    benchmark.group = "engine step, char-medium"
    benchmark(lambda: backend.step(tokens, state))
