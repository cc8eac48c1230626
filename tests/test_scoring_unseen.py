"""Scoring text the model has not seen: out-of-vocabulary counts, --strict, case folding, --per-line."""

from __future__ import annotations

import json

import pytest

from lstmgen import Generator
from lstmgen.errors import LstmgenError


def test_one_unknown_character_is_counted_and_the_rest_scored(artifacts):
    gen = Generator.load(artifacts["names"])
    lines = ["anna", "emma", "noah", "liam"] * 20
    text = "\n".join(lines[:-1] + ["chloè"]) + "\n"
    s = gen.score(text)
    assert s.oov == 1 and s.oov_rate == pytest.approx(1 / (s.tokens + 1))
    clean = gen.score(text.replace("è", ""))
    assert s.nats == pytest.approx(clean.nats) and s.tokens == clean.tokens and clean.oov == 0
    with pytest.raises(LstmgenError, match="lacks: 'è'"):
        gen.score(text, strict=True)


def test_lower_case_vocabulary_folds_the_case_of_text_and_prompts(artifacts):
    gen = Generator.load(artifacts["names"])
    upper, lower = gen.score("Anna\nEmma\n"), gen.score("anna\nemma\n")
    assert upper.case_folded and not lower.case_folded and upper.nats == lower.nats
    assert gen.generate(num=3, prompt="Ma", seed=5) == gen.generate(num=3, prompt="ma", seed=5)


def test_word_models_count_unknown_words_scored_as_unk(artifacts):
    gen = Generator.load(artifacts["moe"])
    text = "moe: hey zyxwvut qwertyuiop, homer.\n"
    s = gen.score(text)
    unknown = gen.tokenizer.encode(text).count(gen.tokenizer.unk_id)
    assert s.oov == unknown >= 2 and s.oov_scored and s.oov_rate == pytest.approx(unknown / s.tokens)
    assert "scored as <unk>" in s.coverage()


def test_cli_reports_oov_and_scores_per_line(artifacts, tmp_path, capsys):
    from lstmgen.cli import main

    f = tmp_path / "cands.txt"
    f.write_text("anna\nzzqx\nLéa\n")
    assert main(["score", str(artifacts["names"]), str(f)]) == 0
    out = capsys.readouterr().out
    assert "oov 1 (" in out and "left out of the figure" in out and "lower case" in out
    assert main(["score", str(artifacts["names"]), str(f), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["oov"] == 1 and d["oov_rate"] > 0 and d["case_folded"] is True and "covers" in d
    assert main(["score", str(artifacts["names"]), str(f), "--per-line", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["anna", "zzqx", "Léa"] and rows[2]["oov"] == 1
    assert rows[0]["nats_per_token"] < rows[1]["nats_per_token"]  # a real name beats a random string
    assert main(["score", str(artifacts["names"]), str(f), "--strict"]) == 2
    assert "lacks" in capsys.readouterr().err


def test_streams_help_says_why_it_changes_the_figure(capsys):
    from lstmgen.cli import main

    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "changes the figure" in " ".join(capsys.readouterr().out.split())
