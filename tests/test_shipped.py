"""The shipped models: each loads without torch, scores its validation split as its manifest says,
and int8 variants stay within 1% of their fp32 twin."""

from __future__ import annotations

import json

import pytest

from lstmgen import Generator
from lstmgen.cli import main
from lstmgen.corpus import read_records, read_text
from lstmgen.generator import DEFAULT_MODEL, shipped_models
from lstmgen.trainer.splits import split_records, split_text

from .conftest import corpus_path

CORPUS = {"names": "names.txt", "moe": "moes_tavern_lines.txt", "shakespeare": "tinyshakespeare.txt"}


def _val_slice(model: str) -> tuple[str, bool]:
    base = model.removesuffix("-int8")
    path = corpus_path(CORPUS[base])
    if base == "names":
        # Every 4th record: the split keeps the file's order, and names.txt runs from common to rare
        # names, so a leading slice would be far easier than the whole split.
        return "\n".join(split_records(read_records(path))[1][::4]) + "\n", True
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
    stated = m.validation_nats
    assert stated is not None, f"{model}'s manifest records no validation figure"
    # A slice, not the whole split: close to the stated figure, not equal to it.
    assert abs(score["nats_per_token"] - stated) < 0.05 * stated, (score["nats_per_token"], stated)


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


def test_models_page_reports_every_shipped_model_from_its_manifest(tmp_path):
    from lstmgen.bench.models_page import build

    page = build(tmp_path, None)  # a bare root: no run folders, no corpora, no bench figures
    for name in shipped_models():
        m = Generator.load(name).manifest
        val = m.validation_nats
        assert val is not None, name
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{val:.4f} nats/token" in row
    bases = [n for n in shipped_models() if not n.endswith("-int8")]
    assert page.count("Unedited samples of `lstmgen generate") == len(bases)
