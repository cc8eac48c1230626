"""Data-parallel training: 2 gloo processes on this CPU hold identical weights, match 1 process, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import needs_torch

pytestmark = needs_torch


def _recipe(tmp_path, corpus, max_steps):
    p = tmp_path / f"recipe{max_steps}.toml"
    p.write_text(f'[data]\ncorpus = "{corpus}"\n[model]\nembed_dim = 16\nhidden_size = 32\ndropout = 0.0\n'
                 f"[train]\nbatch_size = 8\nseq_len = 32\nmax_steps = {max_steps}\neval_every = 10\n"
                 "warmup_steps = 3\neval_streams = 4\nthreads = 1\n")  # eval_segments' old name: still read
    return p


def _val(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_nats_per_token"] for r in rows if "val_nats_per_token" in r]


def _train(recipe, out, nproc=None, resume=False, dump=None):
    env = {**os.environ, **({"LSTMGEN_DUMP_RANK_WEIGHTS": str(dump)} if dump else {})}
    cmd = [sys.executable, "-m", "lstmgen", "train", "--config", str(recipe), "--out", str(out), "--no-progress"]
    cmd += (["--nproc", str(nproc)] if nproc else []) + (["--resume"] if resume else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    # All of it: torchrun's report of a failed rank fills the tail, the rank's own last words come before.
    assert r.returncode == 0, r.stderr[-8000:]
    return r


def test_two_gloo_processes_agree_with_each_other_and_with_one(small_corpora, tmp_path):
    import torch

    dump = tmp_path / "dump"
    dump.mkdir()
    recipe = _recipe(tmp_path, small_corpora["shakespeare"], 20)
    r = _train(recipe, tmp_path / "two", nproc=2, dump=dump)
    assert "x 2 processes" in r.stderr
    a, b = torch.load(dump / "rank0.pt", weights_only=True), torch.load(dump / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), "ranks ended with different weights"
    _train(recipe, tmp_path / "one")
    two, one = _val(tmp_path / "two"), _val(tmp_path / "one")
    assert len(two) == len(one) == 2
    # Same global batch, seed and data: only float summation order differs (gradient all-reduce).
    assert abs(two[-1] - one[-1]) < 2e-3, (two, one)

    longer = _recipe(tmp_path, small_corpora["shakespeare"], 30)
    _train(longer, tmp_path / "two", nproc=2, resume=True)
    from lstmgen.trainer import checkpoint

    ckpt = checkpoint.load(tmp_path / "two" / "last.pt")
    assert ckpt.progress.step == 30 and ckpt.world_size == 2 and len(ckpt.torch_rng) == 2


def test_resume_with_another_process_count_continues_with_a_notice(small_corpora, tmp_path):
    from lstmgen.trainer import checkpoint

    _train(_recipe(tmp_path, small_corpora["shakespeare"], 10), tmp_path / "run")
    r = _train(_recipe(tmp_path, small_corpora["shakespeare"], 20), tmp_path / "run", nproc=2, resume=True)
    assert "resuming a 1-process run with 2" in r.stderr and "no longer bit-identical" in r.stderr
    assert "resumed" in r.stderr and "at step 10 (epoch 1, batch 10)" in r.stderr
    ckpt = checkpoint.load(tmp_path / "run" / "last.pt")
    assert ckpt.progress.step == 20 and ckpt.world_size == 2
    r = _train(_recipe(tmp_path, small_corpora["shakespeare"], 30), tmp_path / "run", resume=True)
    assert "resuming a 2-process run with 1" in r.stderr
    ckpt = checkpoint.load(tmp_path / "run" / "last.pt")
    assert ckpt.progress.step == 30 and ckpt.world_size == 1
    assert _val(tmp_path / "run")[-1] < _val(tmp_path / "run")[0]  # it went on learning
