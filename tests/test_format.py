"""Artifact format 2 (model.onnx takes the LSTM state per layer) and the format-1 artifacts it replaces:
those keep working as they are, and `lstmgen upgrade` rewrites them without changing a single sample.

tests/data/format1 holds tiny random-weight artifacts written by lstmgen before format 2 (fp32 and int8,
records and running text), with the generate.onnx of that version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lstmgen import Generator
from lstmgen.cli import main
from lstmgen.errors import LstmgenError
from lstmgen.graph_runner import GraphGenerator
from lstmgen.graphs.step import build_step_graph, per_layer_state
from lstmgen.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_PER_LAYER,
    STATE_STACKED,
    IONames,
    Manifest,
    read_manifest,
    sha256_file,
)

from .conftest import EXPORTED

FORMAT1 = Path(__file__).parent / "data" / "format1"
OLD = ["names-tiny", "names-tiny-int8", "shakespeare-tiny", "shakespeare-tiny-int8"]
SETTINGS = [dict(temperature=0.8), dict(temperature=1.0, top_k=5), dict(temperature=0.0), dict(temperature=0.9, top_p=0.8)]


def samples(folder: Path) -> list[list[str]]:
    g = Generator.load(folder, device="cpu")
    return [g.generate(12, seed=4, max_tokens=30, **st) if g.manifest.records else
            g.generate(6, "a", seed=4, max_tokens=30, **st) for st in SETTINGS]


def old_copy(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(FORMAT1 / name, folder)
    return folder


@pytest.mark.parametrize("name", OLD)
def test_format1_artifacts_generate_and_their_own_graph_agrees(name):
    m = read_manifest(FORMAT1 / name)
    assert m.format_version == 1 and m.io.state == STATE_STACKED
    python = Generator.load(FORMAT1 / name, device="cpu").generate(30, seed=8, max_tokens=20, temperature=1.0, top_k=6)
    assert len(set(python)) > 1
    # generate.onnx as lstmgen of format 1 wrote it, run from Python: the same text
    assert GraphGenerator.load(FORMAT1 / name).generate(30, seed=8, max_tokens=20, temperature=1.0, top_k=6) == python


@pytest.mark.parametrize("name", OLD)
def test_upgrade_keeps_every_sample_and_every_weight(tmp_path, capsys, name):
    folder = old_copy(tmp_path, name)
    before, old_model = samples(folder), onnx.load(str(folder / MODEL_FILE))
    assert main(["upgrade", str(folder)]) == 0
    assert "upgraded to format 2" in capsys.readouterr().out
    m = read_manifest(folder)
    assert (m.format_version, m.io.state) == (FORMAT_VERSION, STATE_PER_LAYER)
    assert m.model_sha256 == sha256_file(folder / MODEL_FILE) != read_manifest(FORMAT1 / name).model_sha256
    new_model = onnx.load(str(folder / MODEL_FILE))
    old_weights = {t.name: t.SerializeToString() for t in old_model.graph.initializer}
    assert all(old_weights[t.name] == t.SerializeToString() for t in new_model.graph.initializer)  # the same bytes
    assert "R1" in old_weights or "R1_quantized" in old_weights
    assert len(new_model.graph.node) == len(old_model.graph.node) - 2 * 2 - 2  # no Slice per layer and state, no Concat
    assert samples(folder) == before
    assert GraphGenerator.load(folder).generate(30, seed=8, max_tokens=20) == Generator.load(folder).generate(
        30, seed=8, max_tokens=20)
    assert main(["upgrade", str(folder)]) == 0 and "already format 2" in capsys.readouterr().out
    assert not [p.name for p in tmp_path.iterdir() if p.name != name]  # no temporary folder left behind


def test_upgrading_several_checks_them_all_first_and_names_what_was_not_attempted(tmp_path, capsys):
    a, b = old_copy(tmp_path, OLD[0]), old_copy(tmp_path, OLD[1])
    assert main(["upgrade", str(a), str(tmp_path / "nosuch"), str(b)]) == 2  # found missing before anything changed
    assert "model folder not found" in capsys.readouterr().err
    assert read_manifest(a).format_version == read_manifest(b).format_version == 1
    (b / MODEL_FILE).write_bytes(b"not onnx")  # a damaged model too is found before anything changes
    assert main(["upgrade", str(a), str(b)]) == 2 and read_manifest(a).format_version == 1
    assert f"{b / MODEL_FILE} does not match the sha256" in capsys.readouterr().err
    # a failure while working on one names those after it, which were not attempted
    from lstmgen.cli import _each_artifact

    c, done = old_copy(tmp_path, OLD[2]), []

    def work(folder, manifest):
        if folder == a:
            raise LstmgenError("a broke")
        done.append(folder)

    with pytest.raises(LstmgenError) as e:
        _each_artifact([str(a), str(c)], work)
    assert str(e.value) == f"a broke (not attempted: {c})" and done == []


def test_records_list_and_other_files_survive_the_upgrade(tmp_path):
    folder = tmp_path / "names"
    shutil.copytree(EXPORTED / "names", folder)
    d = json.loads((folder / MANIFEST_FILE).read_text())
    shutil.copyfile(FORMAT1 / "names-tiny" / MODEL_FILE, folder / MODEL_FILE)  # a format-1 graph of names' vocabulary
    d.update(format_version=1, model_sha256=sha256_file(folder / MODEL_FILE),
             dims={**d["dims"], "embed_dim": 8, "hidden_size": 16}, generate_sha256=None, generate_web_sha256=None)
    del d["io"]["state"]
    (folder / MANIFEST_FILE).write_text(json.dumps(d))
    (folder / "generate.onnx").unlink()
    (folder / "generate-web.onnx").unlink()
    novel = Generator.load(folder).generate(20, seed=1, novel=True)
    assert main(["upgrade", str(folder)]) == 0
    m = read_manifest(folder)
    assert m.records_sha256 == sha256_file(folder / "records.u64") and m.generate_sha256 is not None
    assert Generator.load(folder).generate(20, seed=1, novel=True) == novel


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_the_upgraded_graph_computes_what_a_fresh_format2_graph_does(tmp_path, int8):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lstmgen.bench.models import ModelSpec, random_weights

    spec = ModelSpec("t", 13, 6, 8, 3)
    sd = random_weights(spec, seed=2)
    paths = []
    for name, model in (("stacked", build_step_graph(sd, spec.layers, STATE_STACKED)), ("fresh", build_step_graph(sd, spec.layers))):
        onnx.save(model, tmp_path / f"{name}.onnx")
        if int8:
            quantize_dynamic(str(tmp_path / f"{name}.onnx"), str(tmp_path / f"{name}-q.onnx"), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["LSTM", "MatMul", "Gather"])
        paths.append(tmp_path / (f"{name}-q.onnx" if int8 else f"{name}.onnx"))
    stacked, fresh = (onnx.load(str(p)) for p in paths)
    upgraded = per_layer_state(stacked)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec.vocab, (2, 5))
    h, c = (rng.standard_normal((spec.layers, 2, spec.hidden)).astype(np.float32) for _ in range(2))
    per_layer = {"tokens": tokens} | {name: {"h": h, "c": c}[kind][layers]
                                      for name, _, kind, layers in IONames().state_tensors(spec.layers)}
    run = lambda model, feeds: ort.InferenceSession(model.SerializeToString()).run(None, feeds)  # noqa: E731
    want = run(stacked, {"tokens": tokens, "h0": h, "c0": c})
    for got in (run(upgraded, per_layer), run(fresh, per_layer)):
        assert np.array_equal(got[0], want[0])
        assert np.array_equal(np.concatenate(got[1::2]), want[1]) and np.array_equal(np.concatenate(got[2::2]), want[2])
    with pytest.raises(ValueError, match="not a format-1"):
        per_layer_state(fresh)


def test_a_format1_manifest_is_read_as_stacked_and_written_back_as_format1():
    d = json.loads((FORMAT1 / "names-tiny" / MANIFEST_FILE).read_text())
    assert "state" not in d["io"]
    m = Manifest.from_dict(d)
    assert m.io.state == STATE_STACKED
    assert json.loads(m.to_json()) == d  # what lstmgen of format 1 reads: no field it does not know


def test_an_unknown_state_layout_is_one_clear_line(tmp_path):
    folder = tmp_path / "names"
    shutil.copytree(EXPORTED / "names", folder)
    d = json.loads((folder / MANIFEST_FILE).read_text())
    d["io"]["state"] = "diagonal"
    (folder / MANIFEST_FILE).write_text(json.dumps(d))
    with pytest.raises(LstmgenError, match="io.state must be 'per_layer' or 'stacked'") as e:
        Generator.load(folder)
    assert "\n" not in str(e.value)


def test_shipped_models_are_format2():
    for folder in sorted(p for p in EXPORTED.iterdir() if (p / MANIFEST_FILE).is_file()):
        m = read_manifest(folder)
        assert (m.format_version, m.io.state) == (FORMAT_VERSION, STATE_PER_LAYER), folder.name
        names = {i.name for i in ort.InferenceSession(str(folder / MODEL_FILE)).get_inputs()}
        assert names == {"tokens"} | {n for n, _, _, _ in m.io.state_tensors(m.dims.num_layers)}
