"""Shared fixtures: small corpora cut from ../shared/data, and tiny trained + exported models.

Fixtures that train need torch; in the torch-free CI environment only tests that use shipped
artifacts and plain engine code run (the others are skipped there because torch is absent, and
run in the main environment).
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EXPORTED = REPO / "exported"
HAS_TORCH = importlib.util.find_spec("torch") is not None

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch (the 'train' extra); the engine-only CI run skips it")


def corpus_path(name: str) -> Path:
    p = DATA / name
    if not p.is_file():
        pytest.fail(f"corpus {p} is missing: the tests need ../shared/data beside the repository")
    return p


@pytest.fixture(scope="session")
def small_corpora(tmp_path_factory) -> dict[str, Path]:
    """Slices of the real corpora: a few hundred names, ~20k chars of Shakespeare, ~600 Moe lines."""
    d = tmp_path_factory.mktemp("corpora")
    names = corpus_path("names.txt").read_text().split("\n")[:600]
    (d / "names.txt").write_text("\n".join(names) + "\n")
    (d / "shakespeare.txt").write_text(corpus_path("tinyshakespeare.txt").read_text()[:20000])
    (d / "moe.txt").write_text("\n".join(corpus_path("moes_tavern_lines.txt").read_text().split("\n")[:600]))
    return {"names": d / "names.txt", "shakespeare": d / "shakespeare.txt", "moe": d / "moe.txt"}


def tiny_config(corpus: Path, level: str = "char", records: bool = False, **train):
    from lstmgen.trainer.config import RunConfig

    cfg = RunConfig()
    cfg.data.corpus, cfg.data.level, cfg.data.records = str(corpus), level, records
    cfg.model.embed_dim, cfg.model.hidden_size, cfg.model.num_layers, cfg.model.dropout = 16, 32, 2, 0.1
    cfg.train.batch_size, cfg.train.seq_len, cfg.train.warmup_steps = 16, 32, 5
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.eval_segments, cfg.train.threads = 40, 20, 4, 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture(scope="session")
def tiny_models(small_corpora, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Three tiny trained runs and their fp32 artifacts: char records, char text, word text."""
    if not HAS_TORCH:
        pytest.skip("needs torch to train (the 'train' extra)")
    from lstmgen.trainer.export import export
    from lstmgen.trainer.train import train

    root = tmp_path_factory.mktemp("tiny")
    specs = {"names": ("char", True), "shakespeare": ("char", False), "moe": ("word", False)}
    out = {}
    for name, (level, records) in specs.items():
        cfg = tiny_config(small_corpora[name], level, records)
        cfg.data.min_count = 2  # word model: rare words become <unk>, as in the shipped recipe
        run = root / f"run-{name}"
        train(cfg, run, progress=False, log=lambda m: None)
        art = root / f"art-{name}"
        export(run, art, log=lambda m: None)
        out[name] = (run, art)
    return out


def shipped(name: str) -> Path:
    p = EXPORTED / name
    if not (p / "manifest.json").is_file():
        pytest.fail(f"shipped model {p} is missing")
    return p


@pytest.fixture(scope="session")
def artifacts(request) -> dict[str, Path]:
    """Artifacts for engine tests: tiny freshly trained ones where torch is present, else the shipped ones."""
    if HAS_TORCH:
        return {k: art for k, (_, art) in request.getfixturevalue("tiny_models").items()}
    return {k: shipped(k) for k in ("names", "shakespeare", "moe")}


def artifact_before_generation_graph(tmp_path: Path, model: str = "names") -> Path:
    """A shipped model as exported before generate.onnx existed: no graph files, no manifest fields."""
    import json
    import shutil

    from lstmgen.manifest import GENERATE_FILE, GENERATE_WEB_FILE, MANIFEST_FILE

    folder = tmp_path / model
    shutil.copytree(EXPORTED / model, folder)
    (folder / GENERATE_FILE).unlink()
    (folder / GENERATE_WEB_FILE).unlink()
    d = json.loads((folder / MANIFEST_FILE).read_text())
    del d["generate_sha256"], d["generate_web_sha256"], d["generate_omits"]
    (folder / MANIFEST_FILE).write_text(json.dumps(d))
    return folder


@contextlib.contextmanager
def serving(generators: dict, limits, **options):
    """A `lstmgen serve` server on a free loopback port, run in a thread for the block's duration."""
    from lstmgen.server import make_server

    srv = make_server(generators, "127.0.0.1", 0, limits, **options)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop()
        thread.join(60)
