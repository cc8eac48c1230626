"""The declared contract of `lstmgen serve`: what /openapi.json says is what the server checks.

Schemathesis generates requests from the served document (valid ones, and ones that break it in
every way it knows: wrong types, out-of-range numbers, missing and unknown fields, NaN, huge
numbers, nesting) and checks that nothing gets a 5xx, that every invalid request gets a 4xx, and
that answers match their declared schemas. The nine kinds of request that once got a 500 have a
test each below, as do the facts (usage, finish reasons, echo) the decode loop reports.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import sys

import pytest

from lstmgen import Generator
from lstmgen.server import Limits
from lstmgen.server.schemas import Completion, GenerateResponse, InspectResponse, ModelList, ScoreResponse

from .conftest import serving

SCHEMATHESIS_CHECKS = ("not_a_server_error", "negative_data_rejection", "response_schema_conformance",
                       "content_type_conformance", "status_code_conformance")


@pytest.fixture(scope="module")
def server(artifacts):
    gens = {"names": Generator.load(artifacts["names"]), "moe": Generator.load(artifacts["moe"])}
    # Small limits keep every valid request cheap: generated requests may ask for the most there is.
    with serving(gens, Limits(max_tokens_limit=20, max_batch=4, max_body=65536)) as srv:
        yield srv


def request(srv, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    with contextlib.closing(conn):
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else {}


def post(srv, path: str, body) -> tuple[int, dict]:
    return request(srv, "POST", path, body if isinstance(body, bytes) else json.dumps(body).encode())


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_accepted_bad_input(server, tmp_path):
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", "--checks",
           ",".join(SCHEMATHESIS_CHECKS), "--max-examples", "60", "--workers", "1", "--seed", "1",
           "--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = re.search(r"Test cases:\s*\n\s*(\d+) generated, (.*)", r.stdout)
    assert r.returncode == 0 and summary, r.stdout[-6000:]
    assert int(summary.group(1)) > 500 and "passed" in summary.group(2) and "fail" not in summary.group(2)


# -- the requests that once got a 500 -------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, param", [
    ("/v1/generate", {"model": "names", "progress": 1}, "progress"),  # the body once became Python keywords
    ("/v1/generate", {"model": "names", "stop": 5}, "stop"),
    ("/v1/completions", {"model": "names", "stop": 5}, "stop"),
    ("/v1/generate", {"model": ["names"]}, "model"),
    ("/v1/completions", {"model": ["names"]}, "model"),
    ("/v1/score", {"model": ["names"], "text": "emma"}, "model"),
    ("/v1/inspect", {"model": ["names"], "text": "emma"}, "model"),
    ("/v1/completions", {"model": "names", "stream_options": 5}, "stream_options"),
    ("/v1/generate", {"model": "names", "top_k": 1e20}, "top_k"),
])
def test_once_a_500_now_one_line_naming_the_field(server, path, body, param):
    status, out = post(server, path, body)
    message = out["error"] if isinstance(out["error"], str) else out["error"]["message"]
    assert status == 400 and param in message and "\n" not in message
    if path == "/v1/completions":
        assert out["error"]["param"] == param


@pytest.mark.parametrize("raw", [b'{"model": "names", "num": 1' + b"0" * 5000 + b"}", b'{"temperature": NaN}',
                                 b'{"temperature": Infinity}', b"[" * 50_000, b'{"a": ' * 5000, b"\xff\xfe",
                                 b"null", b'"text"', b"[1, 2]"])
def test_malformed_and_hostile_bodies_get_a_400(server, raw):
    status, out = post(server, "/v1/generate", raw)
    assert status == 400 and "\n" not in out["error"]


@pytest.mark.parametrize("body, message", [
    ({"model": "names", "stream": "true"}, "stream: input should be a valid boolean"),
    ({"model": "names", "echo": "x"}, 'echo must be true or false, got "x"'),  # the value as JSON, as it was sent
    ({"model": "names", "num": True}, "num must be an integer in [1, 4], got true"),
    ({"model": "names", "prompt": 5}, "prompt: input should be a valid string, got 5"),
    ({"model": "names", "allow_unk": "x"}, "allow_unk must be true or false"),
    ({"model": "names", "max_tokens": 1.5}, "max_tokens must be an integer in [0, 20], got 1.5"),
    ({"model": "names", "max_tokens": 21}, "max_tokens must be an integer in [0, 20], got 21"),  # the server's cap
    ({"model": "names", "num": 5}, "num must be an integer in [1, 4], got 5"),
    ({"model": "names", "top_p": 0}, "top_p must be a number in (0, 1], got 0"),
    ({"model": "names", "temperature": None, "seed": -1}, "seed must be an integer in [0, 2^63), got -1"),
])
def test_wrong_types_and_ranges_are_named_as_the_http_caller_wrote_them(server, body, message):
    status, out = post(server, "/v1/generate", body)
    assert status == 400 and message in out["error"], out
    assert out["param"] == message.split(":")[0].split(" ")[0]  # the field at fault, for a form to point at


@pytest.mark.parametrize("prompt", [[], [1, "a"], [[]], 5])
def test_a_prompt_of_no_allowed_shape_is_told_every_shape(server, prompt):
    # /v1/completions takes four shapes of prompt: the message names them all, not the first one pydantic tried
    status, out = post(server, "/v1/completions", {"model": "names", "prompt": prompt})
    assert status == 400 and out["error"]["param"] == "prompt"
    assert out["error"]["message"] == ("prompt must be a text, a list of texts, token ids, or a list of lists of token"
                                       f" ids (no list empty), got {json.dumps(prompt)}")


def test_score_refuses_a_string_where_a_boolean_belongs(server):
    status, out = post(server, "/v1/score", {"model": "names", "text": "emma", "records": "yes"})
    assert status == 400 and "records: input should be a valid boolean" in out["error"]


def test_a_tiny_temperature_is_greedy_and_never_breaks_a_ban(server, artifacts):
    gen = server.models.generators["moe"]
    status, out = post(server, "/v1/generate", {"model": "moe", "temperature": 1e-320, "max_tokens": 20, "seed": 3})
    assert status == 200 and "<unk>" not in out["samples"][0]
    assert out["samples"] == gen.generate(temperature=0, max_tokens=20, seed=99)  # greedy: the seed changes nothing


# -- facts from the decode loop ---------------------------------------------------------------------------------
def test_usage_counts_each_prompt_once_and_every_written_token(server):
    status, out = post(server, "/v1/completions", {"model": "names", "prompt": "Zw", "n": 3, "max_tokens": 5, "seed": 2})
    assert status == 200 and out["usage"]["prompt_tokens"] == 2  # not 6: OpenAI counts a prompt once
    [samples] = [server.models.generators["names"].generate(num=3, prompt="Zw", max_tokens=5, seed=2, echo=False)]
    assert out["usage"]["completion_tokens"] == sum(s.completion_tokens for s in samples)
    assert [c["text"] for c in out["choices"]] == samples
    Completion.model_validate(out)


def test_a_record_cut_by_max_tokens_says_length_and_lists_its_token(server):
    body = {"model": "names", "prompt": "ma", "max_tokens": 1, "echo": True, "logprobs": 1, "seed": 1}
    status, out = post(server, "/v1/completions", body)
    choice = out["choices"][0]
    [sample] = server.models.generators["names"].generate(prompt="ma", max_tokens=1, seed=1, logprobs=1)
    expected = "stop" if sample.finish_reason == "end_of_record" else "length"
    assert status == 200 and choice["finish_reason"] == expected
    assert len(choice["logprobs"]["tokens"]) == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"] == 3


def test_echo_is_the_prompt_as_the_model_read_it_consistent_with_tokens_and_offsets(server):
    status, out = post(server, "/v1/completions", {"model": "names", "prompt": "Ma", "max_tokens": 6, "echo": True,
                                                   "logprobs": 0, "seed": 4})
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert status == 200 and choice["text"].startswith("ma")  # a lower-case vocabulary read 'Ma' as 'ma'
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:k]) for k in range(len(lp["tokens"]))]


def test_native_generate_reports_finish_reasons_and_usage(server):
    status, out = post(server, "/v1/generate", {"model": "names", "num": 3, "max_tokens": 3, "seed": 5})
    GenerateResponse.model_validate(out)
    samples = server.models.generators["names"].generate(num=3, max_tokens=3, seed=5)
    assert out["finish_reasons"] == [s.finish_reason for s in samples]
    assert out["usage"]["completion_tokens"] == sum(s.completion_tokens for s in samples)


def test_declared_responses_match_real_answers(server):
    assert ModelList.model_validate(request(server, "GET", "/v1/models")[1])
    assert ScoreResponse.model_validate(post(server, "/v1/score", {"model": "names", "text": "emma\nava\n"})[1])
    assert InspectResponse.model_validate(post(server, "/v1/inspect", {"model": "moe", "text": "moe_szyslak: hey ."})[1])


def test_the_openapi_document_carries_the_servers_limits_and_the_options_table(server):
    doc = request(server, "GET", "/openapi.json")[1]
    schemas = doc["components"]["schemas"]
    max_tokens = schemas["GenerateRequest"]["properties"]["max_tokens"]["anyOf"][0]
    assert max_tokens["maximum"] == 20 and schemas["CompletionRequest"]["properties"]["n"]["anyOf"][0]["maximum"] == 4
    assert "0 = all" in schemas["GenerateRequest"]["properties"]["top_k"]["description"]
    assert set(doc["paths"]) >= {"/v1/generate", "/v1/completions", "/v1/score", "/v1/inspect", "/v1/models/{model}"}
