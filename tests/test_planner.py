"""The time-budget planner: what it chooses from given speeds (never this machine's), what it keeps
when the user fixed it, its warnings, and the step plan that follows the measured pace to the budget."""

from __future__ import annotations

import json

import pytest

from .conftest import needs_torch, tiny_config

SMALL, BIG = (64, 128, 2), (64, 384, 2)


@pytest.fixture
def reference(monkeypatch):
    """Made-up curves, so the tests hold whatever the measured table says: the big model learns more per
    token (lower floor), the small one sooner."""
    from lstmgen.trainer import planner

    monkeypatch.setattr(planner, "REFERENCE", {
        128: [(t, 1.60 + 0.5 * (t / 1e6) ** -0.5) for t in (1e5, 2e5, 1e6, 2e6, 4e6, 8e6, 16e6)],
        384: [(t, 1.20 + 1.2 * (t / 1e6) ** -0.5) for t in (1e5, 2e5, 1e6, 2e6, 4e6, 8e6, 16e6)],
    })
    return planner


def test_curve_fit_recovers_a_power_law():
    from lstmgen.trainer.planner import Curve

    c = Curve.fit([(t, 1.3 + 0.8 * (t / 1e6) ** -0.4) for t in (5e5, 1e6, 3e6, 1e7, 3e7)])
    assert c.alpha == pytest.approx(0.4) and c.floor == pytest.approx(1.3, abs=1e-6) and c(1e6) == pytest.approx(2.1)
    assert c(1e9) == c(6e7) > 1.3  # past twice the last measured point, no gain is promised


def test_a_short_budget_picks_the_small_model_and_a_long_one_the_big(reference):
    speeds = {SMALL: 60_000.0, BIG: 10_000.0}
    short = reference.choose(60, speeds, corpus_tokens=50_000_000, records=False, val_tokens=100_000)
    long = reference.choose(3000, speeds, corpus_tokens=50_000_000, records=False, val_tokens=100_000)
    assert short.shape == SMALL and long.shape == BIG
    # 60 s at 60k tokens/s, 5% for validation: 3.4M tokens in 64-token windows, about 3000 steps at batch 16
    assert (short.seq_len, short.batch_size) == (64, 16) and short.steps == int(60_000 * 57 / (16 * 64))
    assert long.batch_size == 64 and 3 <= long.steps // long.eval_every <= 20
    assert [c.shape for c in short.candidates] == [SMALL, BIG]  # ranked, best first


def test_a_small_corpus_makes_repeated_epochs_count_for_less(reference):
    assert reference.effective_tokens(1e6, 2e6) == 1e6
    assert reference.effective_tokens(4e6, 1e6) < 4e6
    assert reference.effective_tokens(1e9, 1e6) <= 16e6  # at most 1 + R* epochs' worth
    speeds = {SMALL: 60_000.0, BIG: 20_000.0}
    huge = reference.choose(600, speeds, corpus_tokens=100_000_000, records=False)
    tiny = reference.choose(600, speeds, corpus_tokens=20_000, records=False)
    assert huge.predicted < tiny.predicted


def test_settings_the_user_gave_are_kept_and_named_in_warnings(reference):
    plan = reference.choose(300, {BIG: 10_000.0}, corpus_tokens=10**7, records=False,
                            fixed={"batch_size": 48, "seq_len": 100, "eval_every": 77, "hidden_size": 384})
    assert (plan.shape, plan.batch_size, plan.seq_len, plan.eval_every) == (BIG, 48, 100, 77) and not plan.warnings
    slow = reference.choose(10, {BIG: 1_000.0}, corpus_tokens=10**7, records=False,
                            fixed={"batch_size": 64, "hidden_size": 384})
    assert slow.steps < reference.MIN_STEPS
    [warning] = slow.warnings
    assert "--time-budget" in warning and "--hidden-size" in warning and "--batch-size" in warning


def test_records_batches_count_records_not_windows(reference):
    plan = reference.choose(300, {SMALL: 20_000.0}, corpus_tokens=200_000, records=True, mean_record_tokens=8)
    assert plan.batch_size == reference.pick_batch(20_000 * 300 * 0.95 / 8)
    assert [reference.pick_batch(w) for w in (1, 3000 * 20, 3000 * 32, 10**9)] == [16, 16, 32, 64]


# ---- the trainer's side: the probe's speeds applied, the plan re-fitted to the pace -------------------

@needs_torch
def test_the_trainer_applies_the_plan_from_probed_speeds(small_corpora, tmp_path, monkeypatch, reference):
    from lstmgen.trainer import train as train_module

    speeds = {SMALL: 60_000.0, BIG: 10_000.0, (64, 256, 2): 30_000.0, (128, 512, 2): 5_000.0}
    monkeypatch.setattr(train_module, "probe_speed", lambda shape, *a, **k: speeds.get(shape, 40_000.0))
    cfg = tiny_config(small_corpora["shakespeare"], max_steps=0, time_budget=60.0)
    lines = []
    t = train_module.Trainer(cfg, tmp_path / "run", log=lines.append,
                             choose=frozenset({"shape", "batch_size", "seq_len", "eval_every"}))
    assert (cfg.model.hidden_size, cfg.train.batch_size, cfg.train.seq_len) == (128, 16, 64)
    assert t.model.cfg.hidden_size == 128 and t.batches.seq_len == 64
    kept = tiny_config(small_corpora["shakespeare"], max_steps=0, time_budget=60.0)
    train_module.Trainer(kept, tmp_path / "run2", log=lines.append, choose=frozenset({"seq_len"}))
    assert (kept.model.hidden_size, kept.train.batch_size, kept.train.seq_len) == (32, 16, 64)


class _BusyClock:
    """A fake clock: each reading advances `dt` seconds, twice as much after `slow_after` readings (the
    machine got busy), so the budget is driven by steps, never by this machine's speed."""

    def __init__(self, dt, slow_after):
        self.now, self.dt, self.readings, self.slow_after = 0.0, dt, 0, slow_after

    def __call__(self):
        self.readings += 1
        self.now += self.dt * (2 if self.readings > self.slow_after else 1)
        return self.now


@needs_torch
def test_the_plan_follows_a_slower_machine_and_ends_on_the_budget(small_corpora, tmp_path):
    from lstmgen.trainer.train import train

    cfg = tiny_config(small_corpora["names"], records=True, max_steps=0, time_budget=100.0, eval_every=60,
                      patience=0)
    lines = []
    result = train(cfg, tmp_path / "run", progress=False, log=lines.append, clock=_BusyClock(0.1, 300))
    first = int(next(x for x in lines if " steps to fit the" in x).split("planning ")[1].split()[0])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    elapsed = max(r.get("elapsed", 0) for r in rows)
    assert first > 900 and result.step < first - 200  # planned at 0.1 s a step, re-fitted at 0.2
    assert 95.0 <= elapsed <= 100.5, elapsed  # the whole budget, within 5%
    assert result.status in ("finished", "budget")


@needs_torch
def test_a_redirected_log_gets_no_bar_frames_and_a_line_per_validation(small_corpora, tmp_path):
    import subprocess
    import sys

    log = tmp_path / "train.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "lstmgen", "train", str(small_corpora["names"]), "--records",
                            "--out", str(tmp_path / "run"), "--max-steps", "30", "--eval-every", "10",
                            "--hidden-size", "16", "--embed-dim", "8", "--threads", "1"],
                           stdout=f, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert r.returncode == 0, text
    assert "\r" not in text and "it/s" not in text and "step/s" not in text
    assert [line.split(":")[0] for line in text.splitlines()
                                                if line.startswith("step") and "validation" in line] == ["step 10", "step 20",
                                                                                        "step 30"]


@needs_torch
def test_a_thread_trial_keeps_the_faster_count(monkeypatch):
    import torch

    from lstmgen.trainer.distributed import Dist
    from lstmgen.trainer.train import ThreadTrial

    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    current = {"n": 2}
    monkeypatch.setattr(torch, "get_num_threads", lambda: current["n"])
    trial = ThreadTrial(Dist())
    trial.cores = 2

    def run(steps, seconds):
        for step in steps:
            trial.step(step, seconds(current["n"]))
            if counts:
                current["n"] = counts[-1]

    run(range(1, 301), lambda n: 0.2 if n == 2 else 0.1)  # one thread is twice as fast: kept at step 300
    assert counts == [1] and current["n"] == 1
    run(range(301, 600), lambda n: 0.1)  # nothing changes: no trial until 300 steps after the decision
    assert counts == [1]
    run(range(600, 650), lambda n: 0.5 if n == 1 else 0.05)  # one thread got 5x slower: a trial at once
    assert counts == [1, 2] and current["n"] == 2
    run(range(650, 1000), lambda n: 0.05)  # steady: 300 steps but not PERIOD_S seconds since, no trial
    assert counts == [1, 2]
    # Two threads 5x slower (trials while the slow-down shows), one thread 16x slower still: each trial
    # ends after its first timed step; once the pace is steady, the next comes 300 steps and a minute on.
    run(range(1000, 1400), lambda n: 4.0 if n == 1 else 0.25)
    assert counts == [1, 2, 1, 2, 1, 2, 1, 2] and current["n"] == 2
    assert trial.during is None and trial.decided_at == 1318 and trial.ref == 0.25
