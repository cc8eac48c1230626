"""Step-by-step sessions (lstmgen.session): N samples equal generate's sample, `top` reports the chances
`sample` draws with, a saved state continues exactly (in this process and another), and a damaged or
foreign state is refused in one line."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from lstmgen import Generator
from lstmgen.errors import LstmgenError
from lstmgen.options import OptionError, UnknownOption
from lstmgen.sampling import SamplingParams, distribution_rows, sample_rows
from lstmgen.session import MAGIC, NextToken

from .conftest import shipped

SHAKESPEARE = "ROMEO:\nWhat light"


@pytest.fixture(scope="module")
def gens(artifacts):
    return {name: Generator.load(path) for name, path in artifacts.items()}


def sampled(session, n: int) -> str:
    """n samples (fewer when a record ends first); the session's whole text."""
    while not session.ended and session.steps < n:
        session.sample()
    return session.text


# The options of the table, each changing what is drawn: every one is applied by sample() as by generate.
CASES = [
    ("names", "ma", {"seed": 7}),
    ("names", None, {"seed": 3, "temperature": 1.2, "top_k": 5, "ban": ["e"]}),
    ("shakespeare", SHAKESPEARE, {"seed": 7, "temperature": 0.8, "top_k": 40}),
    ("shakespeare", SHAKESPEARE, {"seed": 2, "top_p": 0.85, "min_p": 0.05, "repetition_penalty": 1.3,
                                  "repetition_window": 8}),
    ("shakespeare", SHAKESPEARE, {"seed": 11, "frequency_penalty": 0.4, "presence_penalty": 0.6, "bias": {"e": 1.5}}),
    ("moe", "Moe_Szyslak: hey", {"seed": 5, "temperature": 0, "logit_bias": {"5": 2.0}}),
    ("moe", "homer_simpson:", {"seed": 9, "top_k": 100, "top_p": 0.9, "allow_unk": True}),
]


@pytest.mark.parametrize("model, prompt, options", CASES)
def test_n_samples_of_a_fresh_session_equal_generate(gens, model, prompt, options):
    n = 60
    expected = gens[model].generate(prompt=prompt, num=1, max_tokens=n, **options)[0]
    session = gens[model].session(prompt=prompt, **options)
    assert sampled(session, n) == expected
    assert session.token_ids == [*expected.prompt_ids, *expected.token_ids]
    assert session.ended == (expected.finish_reason == "end_of_record")


@pytest.mark.parametrize("model", ["shakespeare-int8", "names-int8"])
def test_the_int8_twins_too(model):
    gen = Generator.load(shipped(model))
    expected = gen.generate(prompt="ma" if "names" in model else SHAKESPEARE, max_tokens=40, seed=4, top_k=20)[0]
    assert sampled(gen.session(prompt="ma" if "names" in model else SHAKESPEARE, seed=4, top_k=20), 40) == expected


def test_a_session_on_another_row_writes_that_rows_stream(gens):
    gen = gens["shakespeare"]
    expected = "".join(gen.stream(SHAKESPEARE, row=3, max_tokens=30, seed=8))
    assert sampled(gen.session(prompt=SHAKESPEARE, row=3, seed=8), 30) == expected


# -- top: the chances sample() draws with ------------------------------------------------------------------
@pytest.mark.parametrize("settings", [
    {}, {"temperature": 0.7}, {"top_k": 7}, {"top_p": 0.6}, {"min_p": 0.2}, {"top_k": 12, "top_p": 0.7, "min_p": 0.01},
    {"temperature": 1.3, "repetition_penalty": 2.0}, {"temperature": 0}, {"top_k": 70, "temperature": 0.5},
])
def test_distribution_is_the_share_of_uniforms_for_which_the_kernel_draws_each_token(settings):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(3, 90)) * 2).astype(np.float32)
    logits[1, 5:9] = logits[1, 4]  # ties: the lower id goes first in both
    logits[2, 10] = -np.inf  # a banned token
    history = rng.integers(-1, 90, size=(3, 6))
    params = SamplingParams(**settings)
    probs = distribution_rows(logits, params, history)
    grid = (np.arange(4000) + 0.5) / 4000
    for b in range(3):
        drawn = sample_rows(np.repeat(logits[b: b + 1], len(grid), axis=0), grid, params, np.repeat(history[b: b + 1],
                                                                                                  len(grid), axis=0))
        share = np.bincount(drawn, minlength=90) / len(grid)
        assert np.abs(share - probs[b]).max() <= 1.5 / len(grid)
        assert probs[b].sum() == pytest.approx(1.0) and set(np.flatnonzero(share)) <= set(np.flatnonzero(probs[b]))


def test_top_lists_the_likeliest_tokens_sample_can_draw(gens):
    gen = gens["names"]
    session = gen.session(prompt="ma", seed=1, ban=["r"], top_k=4)
    top = session.top(10)
    assert len(top) == 4 and all(isinstance(t, NextToken) for t in top)  # top_k leaves four
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert sum(p for _, p in top) == pytest.approx(1.0)
    assert "r" not in [t for t, _ in top] and all(gen.tokenizer.tokens[t.id] == t.token for t in top)
    greedy = gen.session(prompt="ma", temperature=0).top(3)
    assert len(greedy) == 1 and greedy[0].probability == 1.0
    assert greedy[0].id == gen.generate(prompt="ma", temperature=0, max_tokens=1, seed=1)[0].token_ids[0]


def test_top_texts_carry_a_word_models_spacing(gens):
    gen = gens["moe"]
    session = gen.session(prompt="moe_szyslak:", seed=1)
    choice = next(t for t in session.top(10) if t.token.isalpha())
    assert choice.text == " " + choice.token
    session.append(choice)
    assert session.text == "moe_szyslak: " + choice.token


# -- append --------------------------------------------------------------------------------------------------
def test_appended_text_reads_as_if_it_were_in_the_prompt(gens):
    gen = gens["shakespeare"]  # fp32: reading in two parts is exact
    options = {"seed": 5, "repetition_penalty": 1.4, "repetition_window": 16}
    a = gen.session(prompt="ROMEO:\n", **options)
    a.append("What light")
    assert a.text == "ROMEO:\nWhat light"
    assert sampled(a, 40) == sampled(gen.session(prompt="ROMEO:\nWhat light", **options), 40)


def test_appending_a_choice_and_ending_a_record(gens):
    gen = gens["names"]
    session = gen.session(prompt="emm", seed=2)
    eos = gen.tokenizer.eos_id
    end = NextToken("<eos>", 0.5, eos, "")
    session.append("a")
    session.append(end)
    assert session.ended and session.text == "emma" and session.token_ids[-1] == eos
    for call in (session.sample, lambda: session.append("x"), session.top):
        with pytest.raises(LstmgenError, match="this session has ended .the model wrote a record.s end marker"):
            call()
    with pytest.raises(LstmgenError, match="one line"):
        gen.session(prompt="em").append("ma\njo")


@pytest.mark.parametrize("options, message", [
    ({"num": 3}, "a session draws one token at a time: leave out num"),
    ({"max_tokens": 3, "stop": "x"}, "leave out max_tokens, stop"),
    ({"top_k": -1}, "top_k must be an integer in [0, 1000000], got -1"),
    ({"ban": ["#"]}, "'#' is not a token of this model's vocabulary"),
])
def test_bad_options_get_the_tables_one_line(gens, options, message):
    with pytest.raises(LstmgenError) as e:
        gens["names"].session(prompt="ma", **options)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownOption) as e:
        gens["names"].session(prompt="ma", topk=3)
    known = str(e.value).split("(known: ")[1].rstrip(")").split(", ")  # what a session takes, not generate's
    assert {"top_k", "prompt", "state", "row"} <= set(known) and not {"num", "max_tokens", "novel", "echo"} & set(known)


# -- saving and loading --------------------------------------------------------------------------------------
def save_after(gen, n: int, **options):
    session = gen.session(prompt=SHAKESPEARE, **options)
    for _ in range(n):
        session.sample()
    return session, session.save()


@pytest.mark.parametrize("options", [
    {"seed": 3},
    {"seed": 2**62 + 5, "repetition_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": 0.2, "bias": {"e": 1.0},
     "ban": ["z"], "top_p": 0.9, "row": 7},
])
def test_a_restored_session_continues_exactly(gens, options):
    gen = gens["shakespeare"]
    original, blob = save_after(gen, 300, **options)  # past one block of the random stream (256 steps)
    restored = gen.session(state=blob)
    assert restored.text == original.text and restored.steps == 300 and restored.seed == original.seed
    assert restored.top(5) == original.top(5)
    assert [restored.sample() for _ in range(80)] == [original.sample() for _ in range(80)]
    assert restored.save() == original.save()


def test_a_state_saved_here_continues_exactly_in_another_process(gens, artifacts, tmp_path):
    gen = gens["moe"]
    session = gen.session(prompt="homer_simpson:", seed=12, top_k=30, repetition_penalty=1.2)
    for _ in range(7):
        session.sample()
    session.append("beer")
    (tmp_path / "state.bin").write_bytes(session.save())
    script = ("import sys, json; from lstmgen import Generator;"
              "s = Generator.load(sys.argv[1]).session(state=open(sys.argv[2], 'rb').read());"
              "[s.sample() for _ in range(40)]; print(json.dumps(s.text))")
    run = subprocess.run([sys.executable, "-c", script, str(artifacts["moe"]), str(tmp_path / "state.bin")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for _ in range(40):
        session.sample()
    assert json.loads(run.stdout) == session.text


def resealed(blob: bytes, edit) -> bytes:
    """The blob with its header edited and a valid checksum again (a well-formed state of another kind)."""
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(blob[start: start + size])
    edit(header)
    head = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + blob[start + size: -32]
    return body + hashlib.sha256(body).digest()


def flipped(blob: bytes) -> bytes:
    b = bytearray(blob)
    b[len(b) // 2] ^= 0x40
    return bytes(b)


@pytest.mark.parametrize("make, message", [
    (lambda blob: flipped(blob), "the session state is damaged (its sha256 does not match"),
    (lambda blob: blob[:-100], "the session state is damaged"),
    (lambda blob: b"PK\x03\x04" + blob[4:], "this is not an lstmgen session state"),
    (lambda blob: blob.decode("latin-1"), "a session state is bytes (what Session.save returned), got str"),
    (lambda blob: resealed(blob, lambda h: h.update(version=3)), "format version 3, newer than this lstmgen reads (2)"),
    (lambda blob: resealed(blob, lambda h: h.update(model_sha256="ab" * 32)), "saved from another model"),
    (lambda blob: resealed(blob, lambda h: h["arrays"][0].__setitem__(2, [3, 3])), "arrays are not valid"),
    (lambda blob: resealed(blob, lambda h: h["settings"]["params"].update(top_k=-4)), "top_k must be an integer"),
    (lambda blob: resealed(blob, lambda h: h.update(step=-1)), "the session state is malformed"),
])
def test_a_damaged_or_foreign_state_is_refused_in_one_line(gens, make, message):
    _, blob = save_after(gens["shakespeare"], 5, seed=1)
    with pytest.raises(LstmgenError) as e:
        gens["shakespeare"].session(state=make(blob))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_state_from_another_artifact_is_refused(gens):
    _, blob = save_after(gens["shakespeare"], 3, seed=1)
    with pytest.raises(LstmgenError, match="saved from another model .* load it with the artifact it was saved from"):
        gens["names"].session(state=blob)
    with pytest.raises(LstmgenError, match="give state alone"):
        gens["shakespeare"].session(prompt="x", state=blob)


def test_option_errors_from_a_state_name_the_option(gens):
    _, blob = save_after(gens["shakespeare"], 3, seed=1)
    with pytest.raises(OptionError):
        gens["shakespeare"].session(state=resealed(blob, lambda h: h["settings"]["params"].update(temperature=-1)))


def test_a_prompt_of_token_ids_is_read_as_generate_reads_it(gens):
    gen = gens["shakespeare"]
    ids = gen.tokenizer.encode("ROMEO:\nWhat")
    for prompt in (ids, [*gen.manifest.start_ids, *ids]):  # an id prompt may bring the model's start tokens
        expected = gen.generate(prompt=prompt, max_tokens=30, seed=6)[0]
        session = gen.session(prompt=prompt, seed=6)
        assert sampled(session, 30) == expected and session.token_ids[-30:] == list(expected.token_ids)


# -- patterns (lstmgen.patterns) keep to a session too ---------------------------------------------------
@pytest.mark.parametrize("model, prompt, pattern", [("names", "ma", dict(regex="[a-z]{2,6}(na|ta)")),
                                                    ("names", None, dict(min_length=4, max_length=6)),
                                                    ("moe", "moe_szyslak:", dict(regex=" [a-z ]{3,30}[.!?]"))])
def test_a_session_with_a_pattern_writes_what_generate_writes(gens, model, prompt, pattern):
    gen = gens[model]
    session = gen.session(prompt=prompt, seed=11, **pattern)
    for _ in range(40):
        if session.ended:
            break
        session.sample()
    [expected] = gen.generate(prompt=prompt, num=1, max_tokens=40, seed=11, **pattern)
    assert session.ended and session.text == expected
    assert all(t.probability > 0 for t in gen.session(prompt=prompt, seed=11, **pattern).top(50))


def test_a_restored_session_keeps_to_its_pattern(gens):
    gen = gens["names"]
    session = gen.session(prompt="j", seed=4, regex="[a-z]{3,8}y")
    session.sample()
    blob = session.save()
    restored = gen.session(state=blob)
    assert restored.pattern_options == {"regex": "[a-z]{3,8}y"}
    while not session.ended:
        assert session.sample() == restored.sample()
    assert restored.ended and restored.text.endswith("y")
    with pytest.raises(LstmgenError, match="the session's pattern does not allow"):
        gen.session(prompt="j", seed=4, regex="[a-z]{3,8}y").append("y" * 10)  # longer than 9 letters
    with pytest.raises(LstmgenError, match="the session's pattern does not allow 'jx'"):
        gen.session(seed=4, regex="j[aeiou][a-z]*").append("jx")
