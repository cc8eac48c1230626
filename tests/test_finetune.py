"""Fine-tuning (--init-from): from an artifact, a run or a shipped model; vocabulary extended, old rows
kept, fine-tuning defaults, provenance in the manifest; int8 and reshaping refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lstmgen.errors import LstmgenError
from lstmgen.manifest import read_manifest

from .conftest import needs_torch

pytestmark = needs_torch

PLACES = Path(__file__).parent / "data" / "places.txt"  # French place names: new characters (é, ç, -, space)


def test_starting_point_keeps_old_rows_and_extends_the_vocabulary(tiny_models, tmp_path):
    import numpy as np

    from lstmgen.trainer.cli import build_config, train_parser
    from lstmgen.trainer.finetune import load_starting_point
    from lstmgen.trainer.train import Trainer

    _, art = tiny_models["names"]
    start = load_starting_point(str(art))
    cfg = build_config(train_parser().parse_args([str(PLACES), "--max-steps", "5", "--threads", "1"]), start)
    assert cfg.data.records and cfg.model.hidden_size == start.config.model.hidden_size
    assert cfg.train.lr == pytest.approx(0.3 * start.config.train.lr) and cfg.train.warmup_steps == 20
    t = Trainer(cfg, tmp_path / "run", log=lambda m: None, start=start)
    old = start.tokenizer.vocab_size
    assert t.tok.tokens[:old] == start.tokenizer.tokens and {"é", "ç", "-", " "} <= set(t.tok.tokens[old:])
    emb = t.model.embed.weight.detach().numpy()
    assert np.array_equal(emb[:old], start.weights["embed.weight"])
    assert np.allclose(emb[old:], start.weights["embed.weight"].mean(axis=0), atol=1e-6)
    bias = t.model.head.bias.detach().numpy()
    assert np.all(bias[old:] == start.weights["head.bias"].min())  # new tokens start as unlikely ones


def test_finetune_from_an_artifact_then_export_records_where_it_started(tiny_models, tmp_path, capsys):
    from lstmgen.cli import main
    from lstmgen.trainer import checkpoint

    _, art = tiny_models["names"]
    run = tmp_path / "run"
    assert main(["train", str(PLACES), "--init-from", str(art), "--out", str(run), "--max-steps", "10",
                 "--eval-every", "5", "--threads", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "fine-tuning from" in err and "new" in err
    ckpt = checkpoint.load(run / "last.pt")
    assert ckpt.init_from["kind"] == "artifact" and ckpt.progress.step == 10
    assert main(["export", str(run), "--out", str(tmp_path / "art")]) == 0
    m = read_manifest(tmp_path / "art")
    assert m.training["init_from"]["model_sha256"] == read_manifest(art).model_sha256
    # resuming a fine-tuned run rebuilds the same extended vocabulary
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "12", "--no-progress"]) == 0
    assert checkpoint.load(run / "last.pt").progress.step == 12


def test_finetune_from_a_run_folder_and_refusals(tiny_models, tmp_path, capsys):
    from lstmgen.cli import main
    from lstmgen.trainer.finetune import load_starting_point

    run, art = tiny_models["names"]
    assert load_starting_point(str(run)).provenance["kind"] == "run"
    int8 = tmp_path / "int8"
    shutil.copytree(art, int8)
    manifest = json.loads((int8 / "manifest.json").read_text())
    (int8 / "manifest.json").write_text(json.dumps({**manifest, "precision": "int8"}))
    with pytest.raises(LstmgenError, match="int8 artifact"):
        load_starting_point(str(int8))
    code = main(["train", str(PLACES), "--init-from", str(art), "--hidden-size", "99", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "keeps its shape" in err and err.count("\n") == 1
    assert main(["train", str(PLACES), "--init-from", str(art), "--level", "word", "--no-progress"]) == 2
    assert "is char-level" in capsys.readouterr().err


def test_a_shipped_model_is_a_starting_point():
    from lstmgen.trainer.finetune import load_starting_point

    start = load_starting_point("names")
    assert start.provenance["kind"] == "artifact" and start.config.data.records
    assert start.weights["embed.weight"].shape[0] == start.tokenizer.vocab_size


def test_a_records_model_fine_tunes_on_running_text_when_asked(tiny_models, tmp_path, small_corpora):
    from lstmgen.cli import main
    from lstmgen.trainer import checkpoint

    _, art = tiny_models["names"]
    text = tmp_path / "text.txt"
    text.write_text(small_corpora["shakespeare"].read_text().lower()[:6000])
    run = tmp_path / "run"
    assert main(["train", str(text), "--init-from", str(art), "--no-records", "--out", str(run), "--max-steps", "4",
                 "--batch-size", "4", "--eval-every", "2", "--threads", "1", "--no-progress"]) == 0
    ckpt = checkpoint.load(run / "last.pt")
    assert not ckpt.records and ckpt.tokenizer["eos_id"] is None
    assert ckpt.tokenizer["tokens"][: read_manifest(art).dims.vocab_size] == read_manifest(art).tokenizer["tokens"]


def test_case_twins_start_as_their_twin_and_the_rate_fits_the_corpus(tiny_models, tmp_path, capsys):
    import numpy as np

    from lstmgen.cli import main
    from lstmgen.trainer import checkpoint
    from lstmgen.trainer.finetune import FULL_RATE_TOKENS, MIN_SCALE, case_twins, fit_to_data, load_starting_point
    from lstmgen.trainer.train import Trainer

    _, art = tiny_models["names"]
    start = load_starting_point(str(art))
    corpus = tmp_path / "capitals.txt"
    corpus.write_text("Emma\nEva\nAnna\nOtto\nEmil\nElla\nAda\nzoé\nRosa\nMarie\n" * 20)
    cfg = tiny_config_from(start, corpus)
    t = Trainer(cfg, tmp_path / "run", log=lambda m: None, start=start)
    tok, old = t.tok, start.tokenizer
    twins = case_twins(old, tok)
    assert {tok.tokens[i]: old.tokens[j] for i, j in twins.items()} == {"E": "e", "A": "a", "O": "o", "R": "r", "M": "m"}
    emb, head = t.model.embed.weight.detach().numpy(), t.model.head.weight.detach().numpy()
    bias = t.model.head.bias.detach().numpy()
    counts = t.data.token_counts
    for new, twin in twins.items():
        assert np.array_equal(emb[new], start.weights["embed.weight"][twin])
        assert np.array_equal(head[new], start.weights["head.weight"][twin])
        expected = start.weights["head.bias"][twin] + np.log(counts[new] / counts[twin])
        assert bias[new] == pytest.approx(expected, abs=1e-6)
    e = tok.index["é"]  # no twin in the old vocabulary: the mean row, the rarest bias
    assert np.allclose(emb[e], start.weights["embed.weight"].mean(axis=0), atol=1e-6)
    assert bias[e] == start.weights["head.bias"].min()

    lr = start.config.train.lr
    assert fit_to_data(start, 1_000, 4) == (pytest.approx(lr * MIN_SCALE), 10)
    assert fit_to_data(start, FULL_RATE_TOKENS * 4, 10_000) == (pytest.approx(lr), 100)
    assert fit_to_data(start, FULL_RATE_TOKENS // 16, 200) == (pytest.approx(lr / 2), 50)
    run = tmp_path / "cli"
    assert main(["train", str(corpus), "--init-from", str(art), "--out", str(run), "--max-steps", "2",
                 "--threads", "1", "--no-progress"]) == 0
    assert "learning rate" in capsys.readouterr().err
    saved = checkpoint.load(run / "last.pt").config["train"]
    assert saved["lr"] == pytest.approx(fit_to_data(start, t_tokens(t), 1)[0]) and saved["warmup_steps"] == 10
    assert main(["train", str(corpus), "--init-from", str(art), "--out", str(tmp_path / "given"), "--max-steps", "2",
                 "--lr", "0.01", "--threads", "1", "--no-progress"]) == 0
    assert checkpoint.load(tmp_path / "given" / "last.pt").config["train"]["lr"] == 0.01  # a flag wins


def tiny_config_from(start, corpus):
    from lstmgen.trainer.cli import build_config, train_parser

    return build_config(train_parser().parse_args([str(corpus), "--max-steps", "2", "--threads", "1"]), start)


def t_tokens(trainer) -> int:
    from lstmgen.trainer.data import training_tokens

    return training_tokens(trainer.data.train)
