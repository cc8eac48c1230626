"""Loading checks the artifact loudly: format and version, sha256, fields, graph against manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmgen import Generator
from lstmgen.errors import LstmgenError
from lstmgen.manifest import Manifest, read_manifest, sha256_file


@pytest.fixture
def art(artifacts, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(artifacts["names"], dst)
    return dst


def _edit(folder, fn, fix_sha=False):
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    fn(d)
    if fix_sha:
        d["model_sha256"] = sha256_file(folder / "model.onnx")
    path.write_text(json.dumps(d))


def test_good_artifact_round_trips(art):
    m = read_manifest(art)
    again = Manifest.from_dict(json.loads(m.to_json()))
    assert again == m
    assert json.loads(m.to_json())["format"] == "lstmgen-artifact"


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format_version=99), "newer than this lstmgen"),
    (lambda d: d.update(format="something-else"), "not an lstmgen artifact"),
    (lambda d: d.pop("dims"), "lacks required field"),
    (lambda d: d["tokenizer"]["tokens"].pop(), "vocabulary has"),
    (lambda d: d.update(model_sha256="0" * 64), "does not match the sha256"),
    (lambda d: d["dims"].update(hidden_size=-3), "positive integer"),
    (lambda d: d.update(start_ids=[10**6]), "start_ids"),
    # an out-of-range default names the manifest's field, not a flag or argument the user never gave
    (lambda d: d["defaults"].update(temperature=-5), r"manifest.json: defaults.temperature must be a number in \[0, 100\], got -5"),
    (lambda d: d["defaults"].update(top_p=0), r"defaults.top_p must be"),
])
def test_bad_manifests_are_refused_clearly(art, mutate, match):
    _edit(art, mutate)
    with pytest.raises(LstmgenError, match=match) as e:
        Generator.load(art)
    assert "\n" not in str(e.value)


def test_missing_truncated_and_foreign_model_files(art, artifacts, tmp_path):
    (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes()[:1000])
    with pytest.raises(LstmgenError, match="sha256"):
        Generator.load(art)
    _edit(art, lambda d: None, fix_sha=True)  # a truncated file that even matches its hash
    with pytest.raises(LstmgenError, match="cannot be loaded by ONNX Runtime"):
        Generator.load(art)
    shutil.copyfile(artifacts["shakespeare"] / "model.onnx", art / "model.onnx")  # another model's graph
    _edit(art, lambda d: None, fix_sha=True)
    with pytest.raises(LstmgenError, match="does not match|predicts"):
        Generator.load(art)
    (art / "model.onnx").unlink()
    with pytest.raises(LstmgenError, match="has no model.onnx"):
        Generator.load(art)


def test_not_json_and_not_a_folder(art, tmp_path):
    with pytest.raises(LstmgenError, match="not found"):
        Generator.load(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(LstmgenError, match="notes.txt is a file, not a model folder"):
        Generator.load(tmp_path / "notes.txt")
    (art / "manifest.json").write_text("{not json")
    with pytest.raises(LstmgenError, match="not valid JSON"):
        Generator.load(art)


def test_loading_never_unpickles(art):
    # An artifact is JSON, ONNX protobuf and raw integers; a pickle placed beside them is ignored.
    (art / "evil.pkl").write_bytes(b"cos\nsystem\n(S'touch /tmp/lstmgen-pwned'\ntR.")
    gen = Generator.load(art)
    assert gen.generate(num=1, seed=1, max_tokens=3)
    import os
    assert not os.path.exists("/tmp/lstmgen-pwned")


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifest_json_never_crashes(art, data):
    base = json.loads((art / "manifest.json").read_text())
    d = json.loads(json.dumps(base))
    for _ in range(data.draw(st.integers(1, 3))):
        target = d
        path = data.draw(st.sampled_from([(), ("dims",), ("tokenizer",), ("defaults",), ("io",)]))
        for p in path:
            target = target[p] if isinstance(target.get(p), dict) else target
        key = data.draw(st.sampled_from(sorted(target) + ["extra"]))
        if data.draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = data.draw(_JSON)
    try:
        m = Manifest.from_dict(d)
    except LstmgenError:
        return
    assert isinstance(m.dims.vocab_size, int) and m.dims.vocab_size == len(m.tokenizer["tokens"])
    np.testing.assert_equal(m.records in (True, False), True)
