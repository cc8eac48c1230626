"""The shipped models: each loads without torch, scores its validation split as its manifest says,
and int8 variants stay within 1% of their fp32 twin."""

from __future__ import annotations

import json

import pytest

from lstmgen import Generator
from lstmgen.cli import main
from lstmgen.corpus import read_records, read_text, split_records, split_text
from lstmgen.generator import DEFAULT_MODEL, shipped_models

from .conftest import corpus_path

CORPUS = {"names": "names.txt", "moe": "moes_tavern_lines.txt", "shakespeare": "tinyshakespeare.txt"}


def _val_slice(model: str) -> tuple[str, bool]:
    base = model.removesuffix("-int8")
    path = corpus_path(CORPUS[base])
    if base == "names":
        return "\n".join(split_records(read_records(path))[1][:800]) + "\n", True
    return split_text(read_text(path))[1][:20000], False


def test_the_default_model_is_shipped_and_generates(capsys):
    assert DEFAULT_MODEL in shipped_models()
    assert main(["generate", "--num", "3", "--seed", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["samples"]) == 3


@pytest.mark.parametrize("model", shipped_models())
def test_score_of_a_validation_slice_matches_the_manifest(model, tmp_path, capsys):
    text, records = _val_slice(model)
    held = tmp_path / "val.txt"
    held.write_text(text)
    assert main(["score", model, str(held), "--json"] + (["--records"] if records else [])) == 0
    score = json.loads(capsys.readouterr().out)
    m = Generator.load(model).manifest
    stated = m.export["val_nats_per_token_int8" if m.precision == "int8" else "val_nats_per_token_fp32"]
    # A slice, not the whole split: close to the stated figure, not equal to it.
    assert abs(score["nats_per_token"] - stated) < 0.08 * stated, (score["nats_per_token"], stated)


@pytest.mark.parametrize("model", [m for m in shipped_models() if m.endswith("-int8")])
def test_int8_models_stay_within_one_percent_of_fp32(model):
    text, records = _val_slice(model)
    q = Generator.load(model).score(text, records=records).nats_per_token
    f = Generator.load(model.removesuffix("-int8")).score(text, records=records).nats_per_token
    assert q <= f * 1.01, (q, f)


@pytest.mark.parametrize("model", shipped_models())
def test_shipped_artifacts_stay_small(model):
    folder = Generator.load(model).folder
    assert sum(f.stat().st_size for f in folder.iterdir()) < 20e6
