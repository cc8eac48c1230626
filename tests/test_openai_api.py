"""The OpenAI-compatible endpoints, driven by the official `openai` client against a real
`lstmgen serve` process on loopback (with an API key), plus the response shaping of logprobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import openai
import pytest

from lstmgen import Generator
from lstmgen.server.openai_compat import logprobs_object

KEY = "test-key-123"


@pytest.fixture(scope="module")
def served(artifacts):
    """A `lstmgen serve` process for the names and moe test models; yields (base_url, {name: Generator})."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "lstmgen", "serve", str(artifacts["names"]), str(artifacts["moe"]), "--port", str(port),
           "--api-key", KEY]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        try:
            line = proc.stderr.readline()
            assert f"http://127.0.0.1:{port}" in line, line
            gens = [Generator.load(artifacts["names"]), Generator.load(artifacts["moe"])]
            yield f"http://127.0.0.1:{port}/v1", {g.manifest.name or g.folder.name: g for g in gens}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            assert "Traceback" not in proc.stderr.read()  # clients that left mid-stream included
        finally:
            proc.kill()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0], api_key=KEY, max_retries=0, timeout=60)


def _names(served) -> tuple[str, str]:
    gens = served[1]
    return next(n for n, g in gens.items() if g.records), next(n for n, g in gens.items() if not g.records)


def test_models_list_in_openai_shape(client, served):
    models = client.models.list()
    assert sorted(m.id for m in models.data) == sorted(served[1])
    assert all(m.object == "model" and m.owned_by == "lstmgen" for m in models.data)
    names, _ = _names(served)
    assert client.models.retrieve(names).id == names


def test_completion_equals_the_library_minus_the_prompt(client, served):
    _, moe = _names(served)
    gen = served[1][moe]
    out = client.completions.create(model=moe, prompt="moe_szyslak:", max_tokens=12, temperature=0.9, seed=7, n=3,
                                    stop=["\n"], extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1},
                                    user="ignored")
    expected = gen.generate(num=3, prompt="moe_szyslak:", max_tokens=12, temperature=0.9, seed=7, stop=["\n"],
                            top_k=20, min_p=0.01, repetition_penalty=1.1)
    assert out.object == "text_completion" and out.model == moe
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert ["moe_szyslak:" + c.text for c in out.choices] == expected
    assert all(c.finish_reason in ("stop", "length") for c in out.choices)
    assert out.usage.completion_tokens > 0 and out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_prompt_list_and_echo(client, served):
    names, _ = _names(served)
    gen = served[1][names]
    out = client.completions.create(model=names, prompt=["em", "jo"], n=2, max_tokens=10, seed=3, echo=True)
    expected = [*gen.generate(num=2, prompt="em", max_tokens=10, seed=3), *gen.generate(num=2, prompt="jo", max_tokens=10, seed=3)]
    assert [c.text for c in out.choices] == expected
    assert [c.text[:2] for c in out.choices] == ["em", "em", "jo", "jo"]


def test_streaming_joins_to_the_same_text(client, served):
    _, moe = _names(served)
    args = dict(model=moe, prompt="homer_simpson:", max_tokens=30, seed=11, temperature=1.0)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 3, "the text did not come in pieces"
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_client_that_leaves_mid_stream(client, served):
    _, moe = _names(served)
    stream = client.completions.create(model=moe, prompt="moe_szyslak:", max_tokens=2000, stream=True)
    assert next(iter(stream)).choices[0].text
    stream.close()
    out = client.completions.create(model=moe, prompt="moe_szyslak:", max_tokens=5, seed=1)  # still serving
    assert out.choices[0].text and out.usage.completion_tokens > 0


@pytest.mark.parametrize("echo", [False, True])
def test_logprobs_are_the_library_figures_in_openai_shape(client, served, echo):
    """The official client gets each token's log-probability and its alternatives; they are the
    engine's own (Generator.generate(logprobs=N)), listed as OpenAI lists them: the prompt's tokens
    only with echo, and no end-of-record token."""
    _, moe = _names(served)
    gen = served[1][moe]
    out = client.completions.create(model=moe, prompt="moe_szyslak:", max_tokens=12, seed=5, logprobs=3, echo=echo)
    lp = out.choices[0].logprobs
    [sample] = gen.generate(prompt="moe_szyslak:", max_tokens=12, seed=5, logprobs=3)
    written = [t for t in sample.logprobs if t.id != gen.tokenizer.eos_id]
    if not echo:
        written = written[len(gen.encode_prompt("moe_szyslak:")):]
    assert lp.token_logprobs == pytest.approx([t.logprob for t in written], abs=1e-9)
    assert all(len(top) == 3 and max(top.values()) >= lp_i - 1e-9 for top, lp_i in zip(lp.top_logprobs, lp.token_logprobs))
    assert "".join(lp.tokens) == out.choices[0].text.lower() if echo else "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_errors_are_openai_errors(client, served):
    names, _ = _names(served)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=names, prompt="a", temperature=-1)
    assert "temperature" in e.value.message and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="a")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=names, prompt="a", logprobs=21)
    assert "logprobs must be an integer in [0, 20]" in e.value.message and e.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=names, prompt="a", frequency_penalty=5)
    assert "frequency_penalty must be a number in [-2, 2]" in e.value.message and e.value.param == "frequency_penalty"
    with pytest.raises(openai.BadRequestError) as e:  # OpenAI's name for the option, and this server's cap
        client.completions.create(model=names, prompt="a", n=10_000)
    assert "- n must be an integer in [1, 256]" in e.value.message and e.value.param == "n"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served[0], api_key="wrong", max_retries=0).models.list()


def test_logprobs_object_has_openai_shape():
    tokens = [("em", -0.5, {"em": -0.5, "an": -1.2}), ("ma", -0.25, {"ma": -0.25}), ("\n", -2.0, {"\n": -2.0, "s": -0.3})]
    out = logprobs_object(tokens, text_offset=3)
    assert out == {"tokens": ["em", "ma", "\n"], "token_logprobs": [-0.5, -0.25, -2.0],
                   "top_logprobs": [{"em": -0.5, "an": -1.2}, {"ma": -0.25}, {"\n": -2.0, "s": -0.3}],
                   "text_offset": [3, 5, 7]}
    assert json.loads(json.dumps(out)) == out
    choice = openai.types.CompletionChoice(text="emma\n", index=0, finish_reason="stop", logprobs=out)
    assert choice.logprobs.text_offset == [3, 5, 7]


# -- what the clients built on the OpenAI API call (issue: lm-eval, llm, LangChain, LiteLLM) -------------------
def _root(served) -> str:
    return served[0].removesuffix("/v1")


def _json(url: str, body: dict | None = None) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_tokenizer_endpoints_in_vllms_shapes(served, prefix):
    names, moe = _names(served)
    gen = served[1][names]
    info = _json(f"{_root(served)}{prefix}/tokenizer_info")  # no model named: the default, the first served
    assert info["eos_token"] == "<eos>" and info["bos_token"] == "<eos>" and info["tokenizer_class"] == "lstmgen-char"
    out = _json(f"{_root(served)}{prefix}/tokenize", {"prompt": "Ma<eos>", "add_special_tokens": False})
    assert out["tokens"] == [*gen.tokenizer.encode("ma"), gen.tokenizer.eos_id] and out["count"] == 3
    with_start = _json(f"{_root(served)}{prefix}/tokenize", {"prompt": "ma", "return_token_strs": True})
    assert with_start["tokens"][0] == gen.manifest.start_ids[0] and with_start["token_strs"][1:] == ["m", "a"]
    assert _json(f"{_root(served)}{prefix}/detokenize", {"tokens": out["tokens"]})["prompt"] == "ma<eos>"
    moe_info = _json(f"{_root(served)}{prefix}/tokenizer_info?model={moe}")
    assert moe_info["eos_token"] is None and moe_info["bos_token"] == "\n" and "moe_szyslak:" in moe_info["chat_template"]


def test_token_id_prompts_read_as_their_text(client, served):
    names, _ = _names(served)
    gen = served[1][names]
    ids = gen.tokenizer.encode("ma")
    by_ids = client.completions.create(model=names, prompt=ids, max_tokens=8, seed=4, n=2)
    by_text = client.completions.create(model=names, prompt="ma", max_tokens=8, seed=4, n=2)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    several = client.completions.create(model=names, prompt=[ids, gen.tokenizer.encode("jo")], max_tokens=8, seed=4)
    assert [c.text for c in several.choices] == [by_text.choices[0].text, client.completions.create(
        model=names, prompt="jo", max_tokens=8, seed=4).choices[0].text]
    with pytest.raises(openai.BadRequestError, match=r"integers in \[0, 26\]"):
        client.completions.create(model=names, prompt=[5, 999], max_tokens=2)


def test_echo_with_max_tokens_0_scores_the_prompt_as_lm_eval_reads_it(client, served):
    """lm-eval sends context+continuation as ids with echo; it sums token_logprobs[ctxlen:-1] (the last is the
    generated one; with max_tokens 0 there is none). The sum is minus what `score` says of the continuation."""
    _, moe = _names(served)
    gen = served[1][moe]
    context, continuation = gen.tokenizer.encode("moe_szyslak: hey"), gen.tokenizer.encode(" homer.")
    out = client.completions.create(model=moe, prompt=context + continuation, max_tokens=0, echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    assert out.usage.completion_tokens == 0 and len(lp.tokens) == out.usage.prompt_tokens == len(context + continuation)
    start = gen.tokenizer.decode(gen.manifest.start_ids)
    expected = gen.score(start + "moe_szyslak: hey homer.").nats - gen.score(start + "moe_szyslak: hey").nats
    assert -sum(lp.token_logprobs[len(context):]) == pytest.approx(expected, abs=1e-4)
    one = client.completions.create(model=moe, prompt=context + continuation, max_tokens=1, echo=True, logprobs=1)
    assert one.choices[0].logprobs.token_logprobs[:-1] == pytest.approx(lp.token_logprobs, abs=1e-9)
    assert len(one.choices[0].logprobs.tokens) == one.usage.prompt_tokens + one.usage.completion_tokens


def test_a_prompt_bringing_its_start_token_lists_it_unpredicted(client, served):
    names, _ = _names(served)
    gen = served[1][names]
    eos = gen.tokenizer.eos_id
    out = client.completions.create(model=names, prompt=[eos, *gen.tokenizer.encode("emma")], max_tokens=0, echo=True,
                                    logprobs=0)
    lp = out.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == 5
    ids = np.array([[eos, *gen.tokenizer.encode("emma")]])
    surprisal, _ = gen.reader(ids[:, :-1], ids[:, 1:], None)  # the engine's own reading of e, m, m, a after <eos>
    assert -sum(lp.token_logprobs[1:]) == pytest.approx(float(surprisal.sum()), abs=1e-4)


def test_streamed_logprobs_come_in_openais_chunk_shape(client, served):
    _, moe = _names(served)
    args = dict(model=moe, prompt="moe_szyslak:", max_tokens=15, seed=8, logprobs=2, stop=["homer"])
    whole = client.completions.create(**args).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **args) if c.choices]
    tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
    values = [v for c in chunks if c.logprobs for v in c.logprobs.token_logprobs]
    assert "".join(c.text for c in chunks) == whole.text
    assert tokens == whole.logprobs.tokens and values == pytest.approx(whole.logprobs.token_logprobs, abs=1e-9)
    offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
    assert offsets == whole.logprobs.text_offset


def test_logit_bias_by_token_id_and_openais_penalties(client, served):
    names, _ = _names(served)
    gen = served[1][names]
    a = gen.tokenizer.index["a"]
    plain = client.completions.create(model=names, prompt="m", max_tokens=10, seed=3, n=4, logit_bias={})
    banned = client.completions.create(model=names, prompt="m", max_tokens=10, seed=3, n=4, logit_bias={str(a): -100})
    assert any("a" in c.text for c in plain.choices) and not any("a" in c.text for c in banned.choices)
    penalised = client.completions.create(model=names, prompt="m", max_tokens=10, seed=3, n=4, frequency_penalty=1.5,
                                          presence_penalty=0.5)
    assert [c.text for c in penalised.choices] == [s.text for s in gen.generate(
        4, "m", max_tokens=10, seed=3, frequency_penalty=1.5, presence_penalty=0.5, echo=False)]


def test_chat_completions_through_the_models_chat_template(client, served):
    _, moe = _names(served)
    gen = served[1][moe]
    messages = [{"role": "user", "content": "hey moe, a beer."}]
    out = client.chat.completions.create(model=moe, messages=messages, n=2, seed=5, max_tokens=30)
    expected = gen.chat(messages, num=2, seed=5, max_tokens=30)
    assert [c.message.content for c in out.choices] == expected and out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(gen.tokenizer.encode(gen.chat_prompt(messages)[0]))
    stream = client.chat.completions.create(model=moe, messages=messages, seed=5, max_tokens=30, stream=True,
                                            logprobs=True, top_logprobs=2)
    parts = list(stream)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == expected[0]
    assert parts[-1].choices[0].finish_reason in ("stop", "length")
    assert any(p.choices[0].logprobs and p.choices[0].logprobs.content for p in parts if p.choices)
    bart = client.chat.completions.create(model=moe, messages=[{"role": "user", "name": "bart_simpson", "content": "hi"}],
                                          seed=1, max_tokens=10, extra_body={"speakers": {"assistant": "homer_simpson:"}})
    assert bart.choices[0].message.content == gen.chat([{"role": "user", "name": "bart_simpson", "content": "hi"}],
                                                       seed=1, max_tokens=10, speakers={"assistant": "homer_simpson:"})[0]
    with pytest.raises(openai.BadRequestError, match="not a speaker this model knows"):
        client.chat.completions.create(model=moe, messages=[{"role": "user", "name": "nobody_here", "content": "hi"}])


def test_unknown_v1_paths_answer_in_openais_shape(served):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{served[0]}/embeddings", data=b"{}", headers={"Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    with e.value:
        body = json.loads(e.value.read())
    assert e.value.code == 404 and body["error"]["type"] == "invalid_request_error" and "no such endpoint" in body["error"]["message"]
