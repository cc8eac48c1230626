"""The OpenAI-compatible endpoints, driven by the official `openai` client against a real
`lstmgen serve` process on loopback (with an API key), plus the response shaping of logprobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

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
