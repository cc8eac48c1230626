"""Export: parity with PyTorch, engine scores equal to training validation, int8, atomic writes."""

from __future__ import annotations

import json
import shutil

import pytest

from lstmgen import Generator
from lstmgen.errors import LstmgenError
from lstmgen.manifest import read_manifest

from .conftest import needs_torch

pytestmark = needs_torch


@pytest.mark.parametrize("name", ["names", "shakespeare", "moe"])
def test_export_parity_and_engine_score_equals_training_validation(tiny_models, name):
    run, art = tiny_models[name]
    m = read_manifest(art)
    assert m.export["parity_max_abs_diff"] <= 1e-4
    assert abs(m.export["val_nats_per_token_fp32"] - m.training["val_nats_per_token"]) < 1e-4
    gen = Generator.load(art)
    val = (run / "val.txt").read_text()
    score = gen.score(val, segments=m.training["eval_segments"])
    assert abs(score.nats_per_token - m.training["val_nats_per_token"]) < 1e-4


def test_torch_reference_writes_the_same_text_as_the_engine(tiny_models):
    from lstmgen.trainer import checkpoint
    from lstmgen.trainer.config import RunConfig
    from lstmgen.trainer.model import LSTMLanguageModel
    from lstmgen.trainer.reference import torch_generate

    run, art = tiny_models["names"]
    ckpt = checkpoint.load(run / "best.pt")
    model = LSTMLanguageModel(RunConfig.from_dict(ckpt.config).model)
    model.load_state_dict(ckpt.model)
    gen = Generator.load(art)
    params = gen.sampling(temperature=1.0, top_k=12)
    ref = torch_generate(model, gen.tokenizer, gen.manifest.start_ids, True, num=24, seed=99, max_tokens=20,
                         params=params)
    assert ref == gen.generate(num=24, seed=99, max_tokens=20, temperature=1.0, top_k=12)


def test_int8_export_records_losses_and_generates(tiny_models, tmp_path):
    from lstmgen.trainer.export import export

    run, _ = tiny_models["shakespeare"]
    m = export(run, tmp_path / "int8", int8=True, allow_int8_loss=True, log=lambda s: None)
    assert m.precision == "int8"
    assert abs(m.export["int8_relative_loss_increase"]) < 0.05
    onnx_ops = (tmp_path / "int8" / "model.onnx").read_bytes()
    assert b"DynamicQuantizeLSTM" in onnx_ops
    gen = Generator.load(tmp_path / "int8")
    assert len(gen.generate(num=2, seed=1, max_tokens=20)) == 2


def test_int8_over_the_loss_bound_is_not_exported(tiny_models, tmp_path, monkeypatch):
    from lstmgen.trainer import export as ex

    monkeypatch.setattr(ex, "INT8_MAX_LOSS_INCREASE", -1.0)
    with pytest.raises(LstmgenError, match="not exported"):
        ex.export(tiny_models["names"][0], tmp_path / "q", int8=True, log=lambda s: None)
    assert not (tmp_path / "q").exists()


def test_interrupted_export_leaves_the_old_artifact_intact(tiny_models, tmp_path, monkeypatch):
    from lstmgen.trainer import export as ex

    run, art = tiny_models["names"]
    out = tmp_path / "names"
    shutil.copytree(art, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real_copy = shutil.copyfile

    def broken_copy(src, dst):
        if not str(dst).startswith(str(tmp_path / ".names.")):
            return real_copy(src, dst)
        with open(dst, "wb") as f:  # a half-written file in the artifact being assembled, then Ctrl-C
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ex.shutil, "copyfile", broken_copy)
    with pytest.raises(KeyboardInterrupt):
        ex.export(run, out, log=lambda s: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["names"]  # no temporary folder left behind


def test_manifest_is_self_describing(tiny_models):
    _, art = tiny_models["moe"]
    d = json.loads((art / "manifest.json").read_text())
    assert list(d)[:2] == ["format", "format_version"]
    assert d["tokenizer"]["level"] == "word" and "<unk>" in d["tokenizer"]["tokens"]
    assert d["format_version"] == 2 and d["io"] == {"tokens": "tokens", "h0": "h0", "c0": "c0", "logits": "logits", "h1": "h1",
                                                    "c1": "c1", "state": "per_layer"}
    for key in ("torch", "onnx", "onnxruntime", "lstmgen"):
        assert key in d["export"]["versions"]
    assert d["training"]["corpus"] == "moe.txt" and d["training"]["seed"] == 1337


def test_export_refuses_to_replace_another_runs_artifact_without_force(tiny_models, tmp_path, capsys):
    from lstmgen.cli import main
    from lstmgen.trainer import export as ex

    names_run, _ = tiny_models["names"]
    moe_run, _ = tiny_models["moe"]
    out = tmp_path / "model"
    ex.export(names_run, out, log=lambda s: None)
    ex.export(names_run, out, log=lambda s: None)  # the same run again: replaced quietly
    assert main(["export", str(moe_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another run" in err and "--force" in err and err.count("\n") == 1
    assert read_manifest(out).tokenizer["level"] == "char"  # untouched
    assert main(["export", str(moe_run), "--out", str(out), "--force"]) == 0
    assert read_manifest(out).tokenizer["level"] == "word"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main(["export", str(names_run), "--out", str(tmp_path / "notes")]) == 2
    assert "not an lstmgen artifact" in capsys.readouterr().err and (tmp_path / "notes" / "todo.txt").exists()


def test_artifact_folders_follow_the_umask_and_manifest_says_which_checkpoint(tiny_models, tmp_path, capsys):
    import os

    from lstmgen.cli import main
    from lstmgen.trainer import export as ex

    run, _ = tiny_models["names"]
    old = os.umask(0o022)
    try:
        ex.export(run, tmp_path / "a", log=lambda s: None)
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    m = read_manifest(tmp_path / "a")
    assert m.training["checkpoint"] == "best.pt" and m.training["run_steps"] >= m.training["steps"] > 0
    assert main(["info", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert f"best.pt from step {m.training['steps']} of a {m.training['run_steps']}-step run" in out
