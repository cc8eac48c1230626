"""Training: it learns, it resumes bit-for-bit, it refuses bad input and mismatched resumes."""

from __future__ import annotations

import json
import pickle

import pytest

from lstmgen.errors import LstmgenError
from lstmgen.machine import cpu_name

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
    (["train", "{d}"], "directory"),
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
                      "[model]\nhidden_size = 24\nembed_dim = 8\n[train]\nbatch_size = 8\ntime_budget = 3\n"
                      "eval_every = 1000\nthreads = 1\n")
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "budget at step" in err or "finished at step" in err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 24 and saved["data"]["records"] is True
