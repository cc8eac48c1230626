"""Training: it learns, it resumes bit-for-bit, it refuses bad input and mismatched resumes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from lstmgen.errors import LstmgenError
from lstmgen.trainer.machine import cpu_name

from .conftest import needs_torch, tiny_config

pytestmark = needs_torch


def _last_checkpoint(run_dir):
    from lstmgen.trainer import checkpoint

    return checkpoint.load(run_dir / "last.pt")


def _weights(run_dir):
    return _last_checkpoint(run_dir).model


def test_overfits_a_tiny_corpus(tmp_path):
    from lstmgen.trainer.train import train

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sat on the mat. " * 150)
    cfg = tiny_config(corpus, max_steps=300, eval_every=100, lr=1e-2, epochs=1000)
    cfg.model.dropout = 0.0
    result = train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert result.status == "finished" and result.step == 300
    assert result.best_val < 0.2, result.best_val  # a uniform guess over 12 chars would be 2.5 nats
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_nats_per_token" in r] == [100, 200, 300]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert _last_checkpoint(tmp_path / "run").machine.startswith(cpu_name() + ", ")  # provenance names the CPU


@pytest.mark.parametrize("corpus, level, records", [("names", "char", True), ("shakespeare", "char", False),
                                                     ("moe", "word", False)])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(small_corpora, tmp_path, corpus, level, records):
    import torch

    from lstmgen.trainer.train import train

    def cfg():
        c = tiny_config(small_corpora[corpus], level, records, max_steps=24, eval_every=10)
        c.model.weight_drop = 0.2  # its masks come from the saved RNG state too
        return c

    quiet = dict(progress=False, log=lambda m: None)
    straight = train(cfg(), tmp_path / "straight", **quiet)
    first = train(cfg(), tmp_path / "resumed", interrupt_at_step=13, **quiet)
    assert first.status == "interrupted" and first.step == 13
    second = train(cfg(), tmp_path / "resumed", resume=True, **quiet)
    assert straight.step == second.step == 24
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.best_val == second.best_val


def test_weight_drop_masks_recurrent_weights_only_while_training():
    import torch

    from lstmgen.trainer.config import ModelConfig
    from lstmgen.trainer.model import LSTMLanguageModel

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, embed_dim=8, hidden_size=16, num_layers=2, dropout=0.0, weight_drop=0.5)
    model = LSTMLanguageModel(cfg)
    plain = LSTMLanguageModel(ModelConfig(**{**vars(cfg), "weight_drop": 0.0}))
    plain.load_state_dict(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 11, (3, 9))
    model.train(), plain.train()
    a, _ = model(tokens)
    b, _ = model(tokens)
    assert not torch.allclose(a, b)  # a fresh mask each forward pass
    assert not torch.allclose(a, plain(tokens)[0])
    a.square().sum().backward()
    assert model.lstm.weight_hh_l1.grad.abs().sum() > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the mask never touches the stored weights
    model.eval(), plain.eval()
    assert torch.equal(model(tokens)[0], plain(tokens)[0])


def test_resume_refuses_a_different_config_and_fresh_runs_refuse_to_overwrite(small_corpora, tmp_path):
    from lstmgen.trainer.train import train

    quiet = dict(progress=False, log=lambda m: None)
    train(tiny_config(small_corpora["names"], records=True, max_steps=5), tmp_path / "run", **quiet)
    other = tiny_config(small_corpora["names"], records=True, max_steps=10)
    other.model.hidden_size = 48
    with pytest.raises(LstmgenError, match="different config.*hidden_size"):
        train(other, tmp_path / "run", resume=True, **quiet)
    with pytest.raises(LstmgenError, match="already holds a run"):
        train(tiny_config(small_corpora["names"], records=True), tmp_path / "run", **quiet)
    longer = train(tiny_config(small_corpora["names"], records=True, max_steps=8), tmp_path / "run", resume=True, **quiet)
    assert longer.step == 8


def test_checkpoints_load_weights_only_and_refuse_pickled_code(tmp_path):
    from lstmgen.trainer import checkpoint

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "last.pt").write_bytes(pickle.dumps({"format": "lstmgen-checkpoint", "x": Boom()}))
    with pytest.raises(LstmgenError, match="cannot be read"):
        checkpoint.load(tmp_path / "last.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("argv, match", [
    (["train", "{d}/missing.txt"], "not found"),
    (["train", "{names}", "--dropout", "1.5"], "--dropout"),
    (["train", "{names}", "--weight-drop", "1"], "--weight-drop"),
    (["train", "{names}", "--batch-size", "0"], "--batch-size"),
    (["train", "{names}", "--time-budget", "-5"], "--time-budget"),
    (["train", "{names}", "--level", "byte"], "--level"),
    (["train", "{names}", "--tie-weights", "--embed-dim", "16", "--hidden-size", "32"], "--tie-weights"),
    (["train", "{names}", "--lr", "0"], "--lr"),
    (["train", "{d}/*.nothing"], "no file matches"),
    (["train", "{one}", "--records"], "at least 2"),
    (["train", "{names}", "--config", "{d}/nope.toml"], "config file not found"),
    (["export", "{d}", "--out", "{d}/x"], "no checkpoint"),
])
def test_cli_bad_input_is_one_line_exit_2(small_corpora, tmp_path, capsys, argv, match):
    from lstmgen.cli import main

    one = tmp_path / "one.txt"
    one.write_text("emma\n")
    subs = dict(d=tmp_path, names=small_corpora["names"], one=one)
    code = main([a.format(**subs) for a in argv] + ["--no-progress"] * (argv[0] == "train"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_train_with_recipe_and_time_budget(small_corpora, tmp_path, capsys):
    from lstmgen.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\ncorpus = "{small_corpora["names"]}"\nrecords = true\n'
                      "[model]\nhidden_size = 24\nembed_dim = 8\n[train]\nbatch_size = 8\ntime_budget = 1000\n"
                      "max_steps = 40\neval_every = 1000\nthreads = 1\n")
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    # A budget far beyond the work: the outcome does not depend on the machine's speed (the budget
    # itself is tested with a step-driven clock above).
    assert "planning 40 steps to fit the 1000 s budget" in err and "finished at step 40" in err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 24 and saved["data"]["records"] is True


# ---- the training loop's parts, one by one ------------------------------------------------------

def _trainer(corpus, tmp_path, records=True, clock=None, **train):
    import time

    from lstmgen.trainer.train import Trainer

    cfg = tiny_config(corpus, records=records, **train)
    cfg.validate()
    lines = []
    t = Trainer(cfg, tmp_path / "run", log=lines.append, clock=clock or time.perf_counter)
    return t, lines


def test_checkpoint_schema_round_trips_and_reads_version_1(tmp_path):
    import torch

    from lstmgen.trainer import checkpoint
    from lstmgen.trainer.checkpoint import Checkpoint, Progress

    ck = Checkpoint(config={"train": {}}, tokenizer={"level": "char", "tokens": ["a"]}, model={"w": torch.ones(2)},
                    optimizer={}, torch_rng=torch.get_rng_state(), progress=Progress(step=7, best_val=1.5, best_step=5),
                    start_ids=[0], records=True, run_id="abc")
    checkpoint.save_atomically(ck, tmp_path / "last.pt")
    back = checkpoint.load(tmp_path / "last.pt")
    assert back.progress == ck.progress and back.run_id == "abc" and torch.equal(back.model["w"], ck.model["w"])
    v1 = {k: v for k, v in ck.to_dict().items() if k not in ("progress", "run_id")}
    v1.update(version=1, step=9, epoch=1, index=3, elapsed=2.0, planned=40, calibrated=False, best_val=1.0,
              last_val=1.1, bad_evals=0)
    torch.save(v1, tmp_path / "old.pt")
    old = checkpoint.load(tmp_path / "old.pt")
    assert (old.progress.step, old.progress.index, old.progress.best_val, old.run_id) == (9, 3, 1.0, "")
    torch.save({**ck.to_dict(), "version": 99}, tmp_path / "new.pt")
    with pytest.raises(LstmgenError, match="newer lstmgen"):
        checkpoint.load(tmp_path / "new.pt")


def test_trainer_step_validate_and_save_one_by_one(small_corpora, tmp_path):
    import math

    from lstmgen.trainer import checkpoint

    t, _ = _trainer(small_corpora["names"], tmp_path)
    loss, tokens = t.train_step()
    assert t.progress.step == 1 and t.progress.index == 1 and math.isfinite(loss) and tokens > 0
    t.open_run_folder()
    score = t.validate()
    assert t.progress.best_val == score.nats_per_token and t.progress.best_step == 1
    assert checkpoint.load(tmp_path / "run" / "best.pt").progress.step == 1
    t.train_step()
    t.save(checkpoint.LAST)
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    assert saved.progress.step == 2 and saved.run_id == t.run_id and saved.tokenizer == t.tok.to_dict()
    t.metrics.close()


def test_time_budget_plan_is_fitted_at_calibration(small_corpora, tmp_path):
    from lstmgen.trainer.train import CALIBRATE_AT

    t, lines = _trainer(small_corpora["names"], tmp_path, max_steps=0, time_budget=100.0, eval_every=50)
    assert "100 s time budget" in t.describe_plan()
    for _ in range(CALIBRATE_AT):
        t.pace.step(0.5)  # 2 steps/s measured
    t.progress.step, t.progress.elapsed = CALIBRATE_AT, 15.0
    t.pace.stretch_s = 5.0  # a validation and checkpoint take 5 s
    t.calibrate()
    # 85 s left, 5 of them for the last validation; then 0.5 s a step + 5 s every 50 steps
    assert t.progress.planned == CALIBRATE_AT + int(80.0 / (0.5 + 5.0 / 50)) and t.progress.calibrated
    assert f"planning {t.progress.planned} steps" in lines[-2] and "too few" in lines[-1]


class _StepClock:
    """A fake clock that advances a fixed time per reading: the time budget is then driven by steps."""

    def __init__(self, seconds_per_reading):
        self.now, self.dt = 0.0, seconds_per_reading

    def __call__(self):
        self.now += self.dt
        return self.now


def test_a_time_budget_without_epochs_trains_for_the_budget_not_20_epochs(tmp_path):
    from lstmgen.trainer.train import train

    corpus = tmp_path / "few.txt"
    corpus.write_text("\n".join(["anna", "bob", "carla", "dave", "erin", "fred", "gina", "hugo"] * 6) + "\n")
    cfg = tiny_config(corpus, records=True, max_steps=0, time_budget=150.0, eval_every=50, patience=0)
    lines = []
    result = train(cfg, tmp_path / "run", progress=False, log=lines.append, clock=_StepClock(0.5))
    steps_per_epoch = 3  # 43 training records / batch 16
    assert result.step > 20 * steps_per_epoch and result.status in ("budget", "finished")
    assert any("time budget" in line and "planning" in line for line in lines)
    planned = [int(x.split("planning ")[1].split()[0]) for x in lines if " steps to fit the" in x]
    assert planned and abs(result.step - planned[0]) <= 30  # the plan printed is (about) where it ended


def test_a_corpus_smaller_than_a_batch_is_warned_about(tmp_path):
    corpus = tmp_path / "few.txt"
    corpus.write_text("\n".join(["anna", "bob", "carla", "dave", "erin", "fred"]) + "\n")
    _, lines = _trainer(corpus, tmp_path)
    from lstmgen.trainer.train import Trainer

    t = Trainer(tiny_config(corpus, records=True), tmp_path / "run2", log=lines.append)
    t.announce()
    assert any("fewer than one batch" in line for line in lines)


def test_a_short_run_logs_a_curve_and_samples_come_before_their_step_line(small_corpora, tmp_path):
    from lstmgen.trainer.train import train

    cfg = tiny_config(small_corpora["names"], records=True, max_steps=100, eval_every=50, sample_every=20,
                      sample_size=2, target=9.0)
    lines = []
    train(cfg, tmp_path / "run", progress=False, log=lines.append)
    assert "(target 9 met)" in lines[-1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "train_loss" in r]) >= 50  # a 100-step run's curve has points, not two
    for i, line in enumerate(lines):
        if line.startswith("  sample:") and not lines[i + 1].startswith("  sample:"):
            step = int(lines[i + 1].split()[1].rstrip(":"))
            assert lines[i + 1].startswith("step ") and step % 20 == 0, lines[i + 1]


# ---- flags ----------------------------------------------------------------------------------------

def test_every_train_flag_shows_its_default_and_level_defaults():
    from lstmgen.trainer.cli import train_parser

    p = train_parser()
    for action in p._actions:
        if action.option_strings and action.option_strings[0] not in ("-h", "--debug"):
            assert "default" in (action.help or ""), action.option_strings
    helps = {a.option_strings[0]: a.help for a in p._actions if a.option_strings}
    assert "default: 64; word level: 256" in helps["--embed-dim"]
    assert list(next(a for a in p._actions if "--level" in a.option_strings).choices) == ["char", "word"]


def _config(argv):
    from lstmgen.trainer.cli import build_config, train_parser

    notes = []
    return build_config(train_parser().parse_args(argv), notice=notes.append), notes


def test_word_level_unties_weights_when_sizes_differ_and_no_tie_weights_turns_it_off(small_corpora):
    cfg, notes = _config([str(small_corpora["moe"]), "--level", "word", "--embed-dim", "32", "--hidden-size", "64"])
    assert not cfg.model.tie_weights and "untied" in notes[0]
    cfg, _ = _config([str(small_corpora["moe"]), "--level", "word"])
    assert cfg.model.tie_weights
    cfg, _ = _config([str(small_corpora["moe"]), "--level", "word", "--no-tie-weights"])
    assert not cfg.model.tie_weights


def test_recipe_corpus_path_is_relative_to_the_recipe_file(small_corpora, tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.toml"
    data = tmp_path / "data"
    data.mkdir()
    (data / "n.txt").write_text(small_corpora["names"].read_text())
    recipe.write_text('[data]\ncorpus = "../data/n.txt"\nrecords = true\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg, _ = _config(["--config", str(recipe)])
    assert Path(cfg.data.corpus) == data / "n.txt"


def test_bad_level_is_one_line_listing_the_choices(capsys):
    from lstmgen.cli import main

    assert main(["train", "x.txt", "--level", "byte"]) == 2
    err = capsys.readouterr().err
    assert "'char', 'word'" in err and err.count("\n") == 1


def test_threads_0_means_automatic_in_engine_commands_too(artifacts, tmp_path, capsys):
    from lstmgen.cli import main

    text = tmp_path / "t.txt"
    text.write_text("anna\nbob\n")
    assert main(["score", str(artifacts["names"]), str(text), "--threads", "0"]) == 0
    cfg, _ = _config([str(text), "--threads", "0"])
    assert cfg.train.threads == 0


# ---- resume without retyping ----------------------------------------------------------------------

def test_resume_takes_corpus_and_settings_from_the_run_and_lists_what_changed(small_corpora, tmp_path, capsys):
    from lstmgen.cli import main
    from lstmgen.trainer import checkpoint

    run = str(tmp_path / "run")
    base = [str(small_corpora["names"]), "--records", "--out", run, "--embed-dim", "8", "--hidden-size", "16",
            "--batch-size", "8", "--eval-every", "5", "--threads", "1", "--no-progress"]
    assert main(["train", *base, "--max-steps", "10"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", run, "--resume", "--max-steps", "15", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming with changed settings: train.max_steps: 10 -> 15" in err
    assert checkpoint.load(tmp_path / "run" / "last.pt").progress.step == 15
    assert main(["train", "--out", run, "--resume", "--hidden-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model.hidden_size: 16 -> 32" in err and err.count("\n") == 1
