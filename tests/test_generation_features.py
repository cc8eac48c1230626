"""Generation features built once in the decode loop: log-probabilities, echo, bias and bans, several
prompts; each through the Python API, the CLI and the server's scheduler."""

from __future__ import annotations

import json
import threading

import pytest

from lstmgen import Generator
from lstmgen.cli import main
from lstmgen.errors import LstmgenError
from lstmgen.generator import PROMPT_ROW_STRIDE
from lstmgen.server.scheduler import PREFILL_INLINE_TOKENS, Scheduler


@pytest.fixture(scope="module")
def gens(artifacts):
    return {k: Generator.load(p, device="cpu") for k, p in artifacts.items()}


def _scored_text(g: Generator, text: str) -> str:
    """The text whose score covers a sample's tokens: running text starts from the start tokens."""
    return text if g.records else g.tokenizer.decode(g.manifest.start_ids) + text


@pytest.mark.parametrize("name, prompt", [("names", None), ("names", "ma"), ("shakespeare", None),
                                          ("shakespeare", "ROMEO:"), ("moe", None), ("moe", "moe_szyslak:")])
def test_summed_logprobs_equal_the_score_of_the_text(gens, name, prompt):
    g = gens[name]
    samples = g.generate(num=6, prompt=prompt, seed=4, max_tokens=40, temperature=1.0, logprobs=3)
    checked = 0
    for s in samples:
        if g.records and s.logprobs[-1].token != "<eos>":
            continue  # cut by max_tokens: score would add the end marker that was never written
        if g.records and not s.text:
            continue  # an empty record (end marker first): a text to score cannot hold one
        ids = g.tokenizer.encode(_scored_text(g, s.text))
        skip = 0 if g.records else 1  # running text: the first (start) token is never predicted
        assert [t.id for t in s.logprobs if t.token != "<eos>"] == ids[skip:]
        total = sum(t.logprob for t in s.logprobs)
        assert abs(total + g.score(_scored_text(g, s.text)).nats) < 1e-4
        checked += 1
    assert checked >= 3


def test_logprob_alternatives_are_the_likeliest_tokens_in_order(gens):
    g = gens["shakespeare"]
    [s] = g.generate(num=1, seed=2, max_tokens=20, logprobs=5, top_k=3)
    for t in s.logprobs:
        lps = [lp for _, lp in t.top]
        assert len(t.top) == 5 and lps == sorted(lps, reverse=True)
        assert t.logprob <= lps[0] + 1e-12
        assert t.token in [tok for tok, _ in t.top[:3]]  # top-k 3 samples from the three likeliest
    assert s.text == g.generate(num=1, seed=2, max_tokens=20, top_k=3)[0]  # logprobs change nothing sampled


def test_no_echo_leaves_out_the_prompt_everywhere(gens):
    g = gens["moe"]
    kw = dict(prompt="moe_szyslak:", seed=6, max_tokens=30, stop=["homer"])
    full = g.generate(num=4, **kw)
    cont = g.generate(num=4, echo=False, **kw)
    assert cont == [s[len(g.tokenizer.decode(g.tokenizer.encode(kw["prompt"]))):] for s in full]
    assert "".join(g.stream(echo=False, **kw)) == cont[0]
    [lp] = g.generate(num=1, echo=False, logprobs=0, **{**kw, "stop": ()})
    assert len(lp.logprobs) == 30  # only the written tokens


def test_bias_and_bans_change_what_is_written(gens):
    g = gens["names"]
    plain = "".join(g.generate(num=40, seed=3, temperature=1.0))
    banned = "".join(g.generate(num=40, seed=3, temperature=1.0, ban=["a", "e"]))
    biased = "".join(g.generate(num=40, seed=3, temperature=1.0, bias={"z": 4.0}))
    assert "a" in plain and "e" in plain and "a" not in banned and "e" not in banned
    assert biased.count("z") > 3 * max(1, plain.count("z"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(ban=["Q"]), "'Q' is not a token"),
    (dict(bias={"qq": 1.0}), "'qq' is not a token"),
    (dict(bias={"a": float("nan")}), r"bias must be .*\[-100, 100\], got {'a': nan}"),
    (dict(bias={"a": 1000}), r"got {'a': 1000}"),
    (dict(logprobs=-1), "logprobs"),
    (dict(prompts=[]), "prompts"),
    (dict(prompts=["a"], prompt="b"), "not both"),
    (dict(echo="no"), "echo"),
])
def test_bad_feature_arguments_get_one_line_errors(gens, kwargs, match):
    with pytest.raises(LstmgenError, match=match) as e:
        gens["names"].generate(**kwargs)
    assert "\n" not in str(e.value) and "--" not in str(e.value)


def test_python_errors_name_arguments_not_flags(gens):
    with pytest.raises(LstmgenError, match=r"^novel works with records models only") as e:
        gens["shakespeare"].generate(num=2, novel=True)
    assert "--" not in str(e.value)


def test_cli_errors_name_flags_not_arguments(artifacts, capsys):
    # the same errors on the command line name the flags the user typed
    assert main(["generate", str(artifacts["shakespeare"]), "--novel"]) == 2
    assert capsys.readouterr().err == "lstmgen: error: --novel works with records models only (it filters out items of the training data)\n"
    assert main(["score", str(artifacts["names"]), "/nonexistent.txt", "--segments", "0"]) == 2
    assert capsys.readouterr().err == "lstmgen: error: --segments must be an integer >= 1, got 0\n"


def test_each_prompt_keeps_its_own_rows(gens):
    g = gens["names"]
    both = g.generate(num=3, prompts=["ma", "jo"], seed=8, temperature=1.0)
    assert both[0] == g.generate(num=3, prompt="ma", seed=8, temperature=1.0)
    assert both[1] == ["".join(g.stream("jo", seed=8, temperature=1.0, row=PROMPT_ROW_STRIDE + r)) for r in range(3)]
    same = g.generate(num=3, prompts=["ma", "ma"], seed=8, temperature=1.0)
    assert same[0] != same[1]  # two prompts never share random streams


def test_scheduler_runs_every_feature_as_the_library_does(gens):
    g = gens["names"]
    sched = Scheduler(g, max_batch=32)
    try:
        kw = dict(num=4, seed=9, temperature=1.0, echo=False, bias={"o": 1.5}, ban=["e"], logprobs=2)
        jobs = [sched.submit(j) for j in sched.jobs(prompts=["ma", "li"], **kw)]
        novel = sched.submit(sched.job(num=5, seed=9, novel=True))
        for j in [*jobs, novel]:
            assert j.done.wait(60) and j.error is None
        assert [j.samples() for j in jobs] == g.generate(prompts=["ma", "li"], **kw)
        assert novel.results() == g.generate(num=5, seed=9, novel=True)
    finally:
        sched.close()


def test_a_long_prompt_is_read_beside_the_batch_not_in_its_way(gens, monkeypatch):
    # The prefill thread holds a long prompt (its read is gated here): a short request still runs to its end
    # meanwhile, and the long one then writes what Generator.generate writes for it; a failed read ends its job.
    g = gens["shakespeare"]
    sched = Scheduler(g, max_batch=8)
    gate, reading = threading.Event(), threading.Event()
    read = g.backend.prefill

    def gated(ids):
        if ids.shape[1] > PREFILL_INLINE_TOKENS:
            reading.set()
            assert gate.wait(60)
        return read(ids)

    monkeypatch.setattr(g.backend, "prefill", gated)
    long = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 6
    try:
        slow = sched.submit(sched.job(prompt=long, max_tokens=6, seed=1))
        assert reading.wait(60)
        quick = sched.submit(sched.job(prompt="ROMEO:", max_tokens=6, seed=2))
        assert quick.done.wait(60) and quick.error is None and not slow.done.is_set()
        gate.set()
        assert slow.done.wait(60) and slow.error is None
        assert slow.results() == g.generate(1, prompt=long, max_tokens=6, seed=1)
        assert quick.results() == g.generate(1, prompt="ROMEO:", max_tokens=6, seed=2)
        monkeypatch.setattr(g.backend, "prefill", lambda ids: (_ for _ in ()).throw(RuntimeError("read failed")))
        broken = sched.submit(sched.job(prompt=long, max_tokens=6, seed=1))
        assert broken.done.wait(60) and isinstance(broken.error, RuntimeError)
    finally:
        gate.set()
        sched.close()


def test_cli_features(artifacts, gens, capsys, tmp_path):
    art = str(artifacts["names"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ma\njo\n")
    assert main(["generate", art, "--prompt-file", str(prompts), "--num", "2", "--seed", "1", "--allow-known",
                 "--json", "--no-echo", "--logprobs", "1", "--bias", "o=1", "--ban", "e"]) == 0
    out = json.loads(capsys.readouterr().out)
    lib = gens["names"].generate(num=2, prompts=["ma", "jo"], seed=1, echo=False, logprobs=1, bias={"o": 1.0},
                                 ban=["e"])
    assert out["prompts"] == ["ma", "jo"]
    assert out["samples"] == [[s.to_dict() for s in group] for group in lib]
    assert main(["list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert any(line.startswith("names ") and "char-level records" in line for line in listing)
    assert main(["info"]) == 0
    assert capsys.readouterr().out.splitlines() == listing


def test_models_page_writes_prompts_as_the_shell_reads_them():
    from lstmgen.bench.models_page import shell_word

    assert shell_word("ROMEO:\n") == "$'ROMEO:\\n'"
    assert shell_word("homer_simpson:") == '"homer_simpson:"'
    assert shell_word(0.8) == "0.8"


@pytest.mark.parametrize("argv, match", [
    (["generate", "{art}", "--bias", "Q=1"], "'Q' is not a token"),
    (["generate", "{art}", "--bias", "a"], "--bias takes TOKEN=VALUE"),
    (["generate", "{art}", "--ban", "Q"], "'Q' is not a token"),
    (["generate", "{art}", "--logprobs", "2"], "add --json"),
    (["generate", "{art}", "--prompt-file", "/nonexistent/prompts.txt"], "prompt file not found"),
])
def test_cli_feature_errors_are_one_line(artifacts, capsys, argv, match):
    code = main([a.format(art=artifacts["names"]) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1


def test_generator_and_score_reprs_say_what_they_are(gens):
    g = gens["names"]
    assert repr(g).startswith("Generator(") and "char-level records" in repr(g) and "vocab" in repr(g)
    score = g.score("emma\nava\n")
    assert f"{score.nats_per_token:.4f} nats/token" in repr(score) and "tokens=9" in repr(score)


@pytest.mark.parametrize("novel", [False, True])
def test_rows_run_in_blocks_give_the_same_samples_as_one_batch(gens, novel):
    from lstmgen.decoding import DecodeLoop

    g = gens["names"]
    [job] = g.jobs(num=20, seed=12, temperature=1.0, novel=novel, block_rows=3)
    loop = DecodeLoop(g.backend, g.tokenizer)
    loop.add(job)
    widest = 0
    while loop.blocks:
        widest = max(widest, loop.rows)
        loop.step()
    assert widest <= 3
    assert job.results() == g.generate(num=20, seed=12, temperature=1.0, novel=novel)


def test_a_broken_step_fails_the_requests_in_flight_and_the_scheduler_goes_on(gens):
    g = gens["names"]
    sched = Scheduler(g, max_batch=16)
    real = sched.loop.backend

    class Broken:
        def __getattr__(self, name):
            return getattr(real, name)

        def step(self, tokens, state):
            raise RuntimeError("device lost")

    try:
        sched.loop.backend = Broken()
        job = sched.submit(sched.job(num=3, seed=1))
        assert job.done.wait(60) and "device lost" in str(job.error)
        sched.loop.backend = real
        again = sched.submit(sched.job(num=3, seed=1))
        assert again.done.wait(60) and again.error is None
        assert again.results() == g.generate(num=3, seed=1)
    finally:
        sched.close()
