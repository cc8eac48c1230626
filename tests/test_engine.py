"""The torch-free engine: determinism, batching, prefill, stop conditions, streaming, --novel, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lstmgen import Generator
from lstmgen.cli import main
from lstmgen.errors import LstmgenError
from lstmgen.manifest import read_record_hashes, record_hash

from .conftest import HAS_TORCH


@pytest.fixture(scope="module")
def gens(artifacts):
    return {k: Generator.load(p, device="cpu") for k, p in artifacts.items()}


@pytest.mark.parametrize("name", ["names", "shakespeare", "moe"])
def test_same_seed_same_text_and_other_seed_other_text(gens, name):
    g = gens[name]
    a = g.generate(num=6, seed=11, max_tokens=40)
    assert a == g.generate(num=6, seed=11, max_tokens=40)
    assert a != g.generate(num=6, seed=12, max_tokens=40)
    assert all(isinstance(s, str) for s in a)


@pytest.mark.parametrize("name", ["names", "moe"])
def test_a_row_is_the_same_alone_or_in_a_batch(gens, name):
    g = gens[name]
    batch = g.generate(num=16, seed=3, max_tokens=30, temperature=1.0, top_k=10)
    for row in (0, 5, 15):
        alone = "".join(g.stream(seed=3, max_tokens=30, temperature=1.0, top_k=10, row=row))
        assert alone == batch[row]


def test_prefill_then_step_equals_one_long_run(gens):
    g = gens["shakespeare"]
    ids = np.array([g.tokenizer.encode("ROMEO:\nWhat light through yonder")], dtype=np.int64)
    full_logits, h_full, c_full = g.backend.run(ids)
    logits, state = g.backend.prefill(ids[:, :10])
    steps = [logits[:, -1]]
    for t in range(10, ids.shape[1]):
        logits, state = g.backend.step(ids[:, t], state)
        steps.append(logits.copy())
    np.testing.assert_allclose(np.stack(steps, 1)[:, :-1], full_logits[:, 9:-1], atol=1e-5)
    np.testing.assert_allclose(state.h_in, h_full, atol=1e-5)


def test_records_end_at_their_marker_and_respect_max_tokens(gens):
    g = gens["names"]
    out = g.generate(num=40, seed=1)
    assert all("\n" not in s and s == s.strip() for s in out)
    short = g.generate(num=40, seed=1, max_tokens=3)
    assert all(len(s) <= 3 for s in short)
    assert [s[:3] for s in out if len(s) >= 3] == [s for s, o in zip(short, out) if len(o) >= 3]


def test_prompt_starts_every_sample(gens):
    for s in gens["names"].generate(num=10, prompt="ma", seed=2):
        assert s.startswith("ma")


def test_stop_strings_end_samples_while_generating(gens):
    g = gens["shakespeare"]
    free = g.generate(num=8, seed=4, max_tokens=150)
    stopped = g.generate(num=8, seed=4, max_tokens=150, stop=["e", "\n"])
    for f, s in zip(free, stopped):
        assert "e" not in s and "\n" not in s
        assert f.startswith(s) and len(s) < len(f)
        assert f[len(s)] in "e\n"


def test_stream_yields_pieces_that_join_to_generate(gens):
    g = gens["moe"]
    pieces = list(g.stream("moe_szyslak:", seed=9, max_tokens=60, stop=["homer"]))
    assert len(pieces) > 3
    assert "".join(pieces) == g.generate(num=1, prompt="moe_szyslak:", seed=9, max_tokens=60, stop=["homer"])[0]


def test_novel_names_are_not_in_the_corpus_and_not_repeated(gens, artifacts):
    g = gens["names"]
    out = g.generate(num=30, seed=5, novel=True, temperature=1.0)
    known = set(read_record_hashes(artifacts["names"]).tolist())
    assert len(out) == 30 and len(set(out)) == 30
    assert all(record_hash(s) not in known for s in out)
    plain = g.generate(num=200, seed=5, temperature=0.5)
    assert any(record_hash(s) in known for s in plain), "the check above would pass vacuously"
    with pytest.raises(LstmgenError, match="records models only"):
        gens["shakespeare"].generate(num=2, novel=True)


def test_cli_generate_writes_only_new_names_unless_known_ones_are_allowed(gens, artifacts, capsys):
    art = str(artifacts["names"])
    known = set(read_record_hashes(artifacts["names"]).tolist())
    assert main(["generate", art, "--num", "40", "--seed", "3", "-t", "0.5", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["novel"] is True and len(default["samples"]) == 40
    assert not any(record_hash(s) in known for s in default["samples"])
    assert main(["generate", art, "--num", "200", "--seed", "3", "-t", "0.5", "--json", "--allow-known"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["novel"] is False
    assert plain["samples"] == gens["names"].generate(num=200, seed=3, temperature=0.5)
    assert any(record_hash(s) in known for s in plain["samples"]), "the default's check would pass vacuously"


def test_word_models_write_no_unk_unless_allowed(gens):
    g = gens["moe"]
    unk = g.tokenizer.tokens[g.tokenizer.unk_id]
    plain = g.generate(num=16, seed=2, max_tokens=60, temperature=1.5)
    assert not any(unk in s for s in plain)
    allowed = g.generate(num=16, seed=2, max_tokens=60, temperature=1.5, allow_unk=True)
    assert any(unk in s for s in allowed), "the check above would pass vacuously"


def test_prompts_the_vocabulary_cannot_encode(gens):
    with pytest.raises(LstmgenError, match="'1'"):  # 'Q' would be read as 'q' (lower-case vocabulary)
        gens["names"].generate(prompt="Qx1")
    word = gens["moe"]
    out = word.generate(num=1, prompt="moe_szyslak: zyzzyvaword", seed=1, max_tokens=5)[0]
    assert out.startswith("moe_szyslak: <unk>")


@pytest.mark.parametrize("kwargs", [dict(num=0), dict(max_tokens=-1), dict(max_tokens=0, echo=False), dict(max_tokens=10**9), dict(seed=-1),
                                    dict(temperature=-0.5), dict(top_p=0), dict(stop=[""]), dict(num=2.5),
                                    dict(top_k=-1), dict(top_k=1e20), dict(top_k=10**20), dict(progress_bar=1)])
def test_bad_parameters_raise_one_line_errors(gens, kwargs):
    with pytest.raises(LstmgenError) as e:
        gens["names"].generate(**kwargs)
    assert "\n" not in str(e.value)


def test_cli_generate_json_score_json_and_info(artifacts, capsys, tmp_path):
    art = str(artifacts["names"])
    assert main(["generate", art, "--num", "5", "--seed", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["samples"]) == 5 and out["seed"] == 7
    held = tmp_path / "held.txt"
    held.write_text("emma\nolivia\nava\n")
    assert main(["score", art, str(held), "--records", "--json"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert {"nats", "tokens", "chars", "nats_per_token", "perplexity", "bits_per_char"} <= set(score)
    assert score["tokens"] == 4 + 6 + 3 + 3  # letters plus one end marker each
    assert main(["info", art]) == 0
    assert "char-level records" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["generate", "{art}", "--temperature", "-1"], "temperature"),
    (["generate", "{art}", "--top-p", "2"], "top-p"),
    (["generate", "{art}", "--top-k", "-1"], "--top-k must be an integer in [0, 1000000]"),
    (["generate", "{art}", "--max-tokens", "0", "--no-echo"], "--max-tokens 0 writes nothing"),
    (["generate", "{art}", "--max-tokens", "-2"], "--max-tokens must be an integer in [0, 100000]"),
    (["generate", "{art}", "--stream", "--num", "3"], "--stream"),
    (["generate", "/nonexistent/model"], "not found"),
    (["generate", "no-such-shipped-model"], "no model folder or shipped model"),
    (["score", "{art}", "/nonexistent.txt"], "not found"),
    # what argparse itself refuses: one line naming the command, not its whole usage
    (["generate", "{art}", "--temperature", "abc"], "lstmgen generate: argument --temperature/-t: invalid float value: 'abc'"),
    (["generate", "{art}", "--device", "tpu"], "lstmgen generate: argument --device: invalid choice"),
    (["serve", "--port", "abc"], "(see lstmgen serve --help)"),
    (["generate", "{art}", "--bogus"], "lstmgen generate: unrecognized arguments: --bogus (see lstmgen generate --help)"),
    (["info", "{art}", "--bogus"], "lstmgen info: unrecognized arguments: --bogus"),
    (["no-such-command"], "argument COMMAND: invalid choice: 'no-such-command'"),
    (["bench", "--steps", "x"], "lstmgen bench: argument --steps: invalid int value"),
])
def test_cli_errors_are_one_line_with_exit_code_2(artifacts, capsys, argv, match):
    code = main([a.format(art=artifacts["names"]) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def _flags(parser, command):
    """(command, action) of every flag and positional a parser and its subcommands show in --help."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, f"{command} {name}")
        elif action.help != argparse.SUPPRESS and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield command, action


def test_every_flag_of_every_command_shows_its_default():
    from lstmgen.bench.cli import _parser as bench_parser
    from lstmgen.cli import _parser

    parsers = [("lstmgen", _parser()), ("lstmgen bench", bench_parser())]
    if HAS_TORCH:
        from lstmgen.trainer.cli import export_parser, train_parser

        parsers += [("lstmgen train", train_parser()), ("lstmgen export", export_parser())]
    missing = []
    for name, parser in parsers:
        for command, action in _flags(parser, name):
            shown = (action.help or "") % {"default": action.default, "prog": command}
            required = action.required or not action.option_strings and action.nargs in (None, "+")
            if "default" not in shown and not (required and ("required" in shown or not action.option_strings)):
                missing.append(f"{command} {'/'.join(action.option_strings) or action.dest}")
            assert "(default: None)" not in shown and "(default: [])" not in shown, f"{command}: {shown}"
    assert not missing, f"--help shows no default for: {', '.join(missing)}"
    import argparse

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert all(c.description for name, c in commands.items() if name not in ("train", "export", "bench")), \
        "every engine command's --help says what it does"


def test_engine_paths_never_import_torch(artifacts):
    code = (
        "import sys, lstmgen\n"
        "from lstmgen import Generator\n"
        f"g = Generator.load({str(artifacts['names'])!r})\n"
        "g.generate(num=3, seed=1); ''.join(g.stream(seed=1)); g.score('emma\\nava\\n')\n"
        "from lstmgen.cli import main\n"
        f"main(['info', {str(artifacts['names'])!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_word_models_prompt_words_it_lacks_are_named_on_stderr(capsys):
    # a word model reads an unseen word as <unk>: the CLI says which, once each, and still generates
    assert main(["generate", "moe", "--prompt", "xyzzyqq: hello frobnicate xyzzyqq:", "--max-tokens", "3", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("<unk> hello <unk> <unk>")
    assert "2 word(s) of the prompt are not in this model's vocabulary and are read as <unk>: 'xyzzyqq:', 'frobnicate'" in out.err
    assert main(["generate", "moe", "--prompt", "moe_szyslak: hello", "--max-tokens", "3", "--seed", "1"]) == 0
    assert "<unk>" not in capsys.readouterr().err


def test_max_tokens_0_prints_the_prompt_once_not_as_novel_samples(capsys):
    # --max-tokens 0 scores the prompt: one sample (the prompt as read) unless --num asks for more, novel off
    assert main(["generate", "names", "--prompt", "ma", "--max-tokens", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == ["ma"] and out["novel"] is False
