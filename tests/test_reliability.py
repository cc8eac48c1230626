"""Reliability with real processes and threads: SIGKILL/SIGTERM during training and export never
corrupt a file or lose more than the work since the last checkpoint; one Generator serves many
threads with the same results as serial calls; memory stays flat over a soak.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lstmgen import Generator

from .conftest import needs_torch

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _recipe(tmp_path: Path, corpus: Path, max_steps: int) -> Path:
    p = tmp_path / "recipe.toml"
    p.write_text(f'[data]\ncorpus = "{corpus}"\nrecords = true\n[model]\nembed_dim = 16\nhidden_size = 32\n'
                 f"[train]\nbatch_size = 16\nmax_steps = {max_steps}\neval_every = 5\nthreads = 1\n"
                 "warmup_steps = 5\n")
    return p


def _train_cmd(recipe: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "lstmgen", "train", "--config", str(recipe), "--out", str(out), "--no-progress",
            *(["--resume"] if resume else [])]


def _wait_for(predicate, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the process")
        time.sleep(0.02)


def _step_of(run: Path) -> int:
    from lstmgen.trainer import checkpoint

    return checkpoint.load(run / "last.pt").progress.step if (run / "last.pt").exists() else 0


@needs_torch
def test_sigkill_during_training_and_checkpoint_writes_then_resume(small_corpora, tmp_path):
    """Four real SIGKILLs, at training steps and inside checkpoint writes, then a resume that ends
    bit-identical to an uninterrupted run. The process kills itself at an exact step or write
    (LSTMGEN_FAULT_KILL), so the test does not race it: it holds on any machine, fast or slow."""
    import torch

    from lstmgen.trainer import checkpoint

    steps = 300
    recipe = _recipe(tmp_path, small_corpora["names"], steps)
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(recipe, straight, False), check=True, capture_output=True, env=ENV)
    run = tmp_path / "killed"
    rng = random.Random(0)
    kills, saved = 0, 0
    for attempt in range(4):
        during_write = attempt % 2 == 1
        # Between steps at a random step of this process, or inside its 2nd checkpoint write
        # (temporary file written and fsynced, not yet renamed over last.pt/best.pt).
        point = "checkpoint-write@2" if during_write else f"train-step@{rng.randint(7, 40)}"
        proc = subprocess.run(_train_cmd(recipe, run, (run / "last.pt").exists()),
                              env={**ENV, "LSTMGEN_FAULT_KILL": point}, capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: exit {proc.returncode}\n{proc.stderr}"
        kills += 1
        if during_write:
            assert any(run.glob(".*.pt.*.tmp")), "the kill did not land inside a checkpoint write"
        for name in ("last.pt", "best.pt"):
            if (run / name).exists():
                checkpoint.load(run / name)  # never corrupt
        now = _step_of(run)
        assert now >= saved, "a kill lost a checkpoint that had been written"
        saved = now
    assert kills == 4 and 0 < saved < steps
    subprocess.run(_train_cmd(recipe, run, True), check=True, capture_output=True, env=ENV)
    assert not list(run.glob(".*.tmp")), "temporary files of killed writes were left behind"
    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(run / "last.pt")
    assert a.progress.step == b.progress.step == steps
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k


@needs_torch
def test_sigterm_saves_a_resumable_checkpoint(small_corpora, tmp_path):
    recipe = _recipe(tmp_path, small_corpora["names"], 100_000)
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(recipe, run, False), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _step_of(run) >= 5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "resumable checkpoint" in err and "Traceback" not in err
    assert _step_of(run) > 5


@needs_torch
def test_sigkill_during_export_keeps_the_old_artifact(tiny_models, tmp_path):
    run, _ = tiny_models["names"]
    out = tmp_path / "names"
    cmd = [sys.executable, "-m", "lstmgen", "export", str(run), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.run(cmd, env={**ENV, "LSTMGEN_FAULT_KILL": "export-write"}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert any((p / "manifest.json").exists() for p in tmp_path.glob(".names.*.tmp")), "the kill missed the write"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    Generator.load(out)
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names"]


def test_one_generator_many_threads_equals_serial(artifacts):
    gen = Generator.load(artifacts["names"], device="cpu")
    jobs = [(seed, 1 + seed % 5) for seed in range(96)]
    serial = {job: gen.generate(num=job[1], seed=job[0], temperature=1.0, top_k=8) for job in jobs}
    results: dict = {}
    errors: list = []

    def worker(chunk):
        try:
            for job in chunk:
                results[job] = gen.generate(num=job[1], seed=job[0], temperature=1.0, top_k=8)
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(jobs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == serial


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_stays_bounded_over_a_soak(artifacts):
    """Quick form in CI; LSTMGEN_SOAK=20000 runs a long one by hand."""
    n = int(os.environ.get("LSTMGEN_SOAK", "1500"))
    gen = Generator.load(artifacts["names"], device="cpu")
    for i in range(200):  # warm-up: allocator pools and caches reach their steady size
        gen.generate(num=1 + i % 8, seed=i)
    before = _rss_mb()
    for i in range(n):
        gen.generate(num=1 + i % 8, seed=i, stop=["zz"] if i % 3 == 0 else ())
    growth = _rss_mb() - before
    print(f"soak: {n} generate calls, RSS {before:.1f} MB -> growth {growth:+.1f} MB")
    assert growth < 25, f"RSS grew {growth:.1f} MB over {n} calls"


def test_debug_flag_shows_the_traceback(capsys):
    from lstmgen.cli import main

    assert main(["generate", "/nonexistent/model"]) == 2
    with pytest.raises(Exception, match="not found"):
        main(["generate", "/nonexistent/model", "--debug"])
