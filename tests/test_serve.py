"""`lstmgen serve`: endpoints, streaming, validation, disconnects, connection limits, shutdown, and
batching == alone. Servers run on loopback (in this process, or as a real `lstmgen serve` process)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lstmgen import Generator
from lstmgen.server import Limits

from .conftest import serving

MAX_TOKENS = 50_000  # the test servers' limit: a stream asked for this many is still running when checked


@pytest.fixture(scope="module")
def generators(artifacts):
    return {"names": Generator.load(artifacts["names"]), "moe": Generator.load(artifacts["moe"])}


def running(generators, limits: Limits | None = None, **options):
    return serving(generators, limits or Limits(max_body=4096, max_tokens_limit=MAX_TOKENS, max_batch=64, max_streams=2),
                   **options)


@pytest.fixture(scope="module")
def server(generators):
    with running(generators) as srv:
        yield srv


def _url(srv, path):
    return f"http://127.0.0.1:{srv.port}{path}"


def _post(srv, path, body, raw: bytes | None = None, headers: dict | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(_url(srv, path), data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:  # an error response holds its connection until closed (else a ResourceWarning later)
            return e.code, json.loads(e.read())


def _sse(srv, body):
    req = urllib.request.Request(_url(srv, "/v1/generate"), data=json.dumps({**body, "stream": True}).encode(),
                                 method="POST")
    pieces, final = [], None
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event = None
        for line in r:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                payload = json.loads(line[6:])
                if event == "done":
                    final = payload
                else:
                    pieces.append(payload["text"])
    return pieces, final


def test_health_and_models(server):
    with urllib.request.urlopen(_url(server, "/v1/health")) as r:
        assert json.loads(r.read()) == {"status": "ok", "models": ["names", "moe"]}
    with urllib.request.urlopen(_url(server, "/v1/models")) as r:
        listing = json.loads(r.read())
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["names", "moe"]
    assert {m["id"]: m["lstmgen"]["records"] for m in listing["data"]} == {"names": True, "moe": False}
    with urllib.request.urlopen(_url(server, "/v1/models/moe")) as r:
        assert json.loads(r.read())["lstmgen"]["level"] == "word"


def test_generate_equals_the_library(server):
    status, out = _post(server, "/v1/generate", {"model": "names", "num": 5, "temperature": 0.9, "seed": 1})
    assert status == 200 and out["seed"] == 1
    assert out["samples"] == server.models.generators["names"].generate(num=5, temperature=0.9, seed=1)


def test_novel_requests_report_the_seed_they_used(server):
    status, out = _post(server, "/v1/generate", {"model": "names", "num": 4, "novel": True})
    assert status == 200 and len(out["samples"]) == 4
    assert out["samples"] == server.models.generators["names"].generate(num=4, novel=True, seed=out["seed"])


def test_generate_passes_logprobs_echo_bias_ban_and_prompts_through(server):
    body = {"num": 2, "prompts": ["ma", "jo"], "seed": 4, "echo": False, "logprobs": 2, "bias": {"o": 1.0},
            "ban": ["e"]}
    status, out = _post(server, "/v1/generate", {"model": "names", **body})
    assert status == 200
    lib = server.models.generators["names"].generate(**body)
    assert out["samples"] == [[s.to_dict() for s in group] for group in lib]
    code, err = _post(server, "/v1/generate", {"model": "names", "bias": {"Q": 1}})
    assert code == 400 and "'Q' is not a token" in err["error"]


def test_stream_sends_pieces_that_join_to_the_sample(server):
    body = {"model": "moe", "prompt": "moe_szyslak:", "max_tokens": 40, "seed": 3}
    pieces, final = _sse(server, body)
    expected = server.models.generators["moe"].generate(num=1, prompt="moe_szyslak:", max_tokens=40, seed=3)[0]
    assert len(pieces) > 2 and "".join(pieces) == final["text"] == expected
    pieces, final = _sse(server, {**body, "echo": False, "stop": ["homer"]})
    expected = server.models.generators["moe"].generate(num=1, prompt="moe_szyslak:", max_tokens=40, seed=3, echo=False,
                                                 stop=["homer"])[0]
    assert "".join(pieces) == final["text"] == expected and not expected.startswith("moe_szyslak:")


def test_score_endpoint(server):
    status, out = _post(server, "/v1/score", {"model": "names", "text": "emma\nava\n"})
    assert status == 200 and out["tokens"] == 9
    assert out["nats"] == pytest.approx(server.models.generators["names"].score("emma\nava\n").nats)


@pytest.mark.parametrize("body, status, match", [
    ({"model": "names", "temperature": -1}, 400, "temperature"),
    ({"model": "names", "colour": "red"}, 400, "unknown field"),
    ({"model": "names", "max_tokens": MAX_TOKENS + 1}, 400, f"max_tokens must be an integer in [0, {MAX_TOKENS}]"),
    ({"model": "nope"}, 404, "no model named"),
    ({"model": "names", "num": 0}, 400, "num"),
    ({"model": "names", "stream": True, "num": 3}, 400, "one sample"),
])
def test_bad_requests_get_an_error_with_one_line(server, body, status, match):
    code, out = _post(server, "/v1/generate", body)
    assert code == status and match in out["error"] and "\n" not in out["error"]


def test_bad_json_big_bodies_and_unknown_paths(server):
    assert _post(server, "/v1/generate", None, raw=b"{nope")[0] == 400
    assert _post(server, "/v1/generate", None, raw=b"[1, 2]")[0] == 400
    code, out = _post(server, "/v1/generate", None, raw=b"x" * 5000)
    assert code == 413 and "4096" in out["error"]
    code, out = _post(server, "/v1/other", {})  # OpenAI's shape under /v1/: its clients read only that
    assert code == 404 and "no such endpoint" in out["error"]["message"]


def test_keep_alive_serves_several_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        socks = []
        for seed in (1, 2, 3):
            conn.request("POST", "/v1/generate", json.dumps({"model": "names", "seed": seed}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200 and r.version == 11 and json.loads(r.read())["seed"] == seed
            socks.append(conn.sock)
        assert socks[0] is not None and socks[0] is socks[1] is socks[2]
    finally:
        conn.close()


def _open_stream(srv, body, path="/v1/generate") -> socket.socket:
    """A raw client that starts a stream and reads until its first event."""
    data = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    got = b""
    while b"data: " not in got:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the stream: {got!r}"
        got += chunk
    return sock


def _wait_for(condition, what: str, limit: float = 120) -> None:
    """Wait for a condition the server reaches by itself; the limit only stops a broken server from hanging."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/completions"])
def test_a_client_that_disconnects_mid_stream_frees_its_row(server, path):
    """The job is asked for MAX_TOKENS steps; it ends far sooner because its client went away."""
    sched = server.models.schedulers["moe"]
    _wait_for(lambda: sched.rows_in_flight == 0, "an idle scheduler")
    steps_before = sched.steps
    sock = _open_stream(server, {"model": "moe", "max_tokens": MAX_TOKENS, "seed": 1}, path)
    sock.close()
    _wait_for(lambda: sched.rows_in_flight == 0, "the row to leave the batch")
    assert sched.steps - steps_before < MAX_TOKENS // 2


def test_a_client_that_disconnects_before_its_answer_cancels_its_job(server):
    sched = server.models.schedulers["moe"]
    _wait_for(lambda: sched.rows_in_flight == 0, "an idle scheduler")
    steps_before = sched.steps
    data = json.dumps({"model": "moe", "max_tokens": MAX_TOKENS, "seed": 1}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    _wait_for(lambda: sched.rows_in_flight == 1, "the row to join the batch")
    sock.close()
    _wait_for(lambda: sched.rows_in_flight == 0, "the row to leave the batch")
    assert sched.steps - steps_before < MAX_TOKENS // 2


def test_concurrent_requests_are_batched_and_each_equals_its_alone_result(server):
    """The load test, bounded: 24 clients at once against the same work one request at a time."""
    gen = server.models.generators["names"]
    sched = server.models.schedulers["names"]
    jobs = [{"model": "names", "num": 1 + i % 4, "seed": 100 + i, "temperature": 1.0, "top_k": 8 + i % 3}
            for i in range(24)]
    alone = [gen.generate(**{k: v for k, v in j.items() if k != "model"}) for j in jobs]
    steps_before = sched.steps
    serial = [_post(server, "/v1/generate", j)[1]["samples"] for j in jobs]
    serial_steps = sched.steps - steps_before
    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(lambda j: _post(server, "/v1/generate", j)[1]["samples"], jobs))
    together_steps = sched.steps - steps_before - serial_steps
    assert serial == alone and together == alone
    assert together_steps < serial_steps, "concurrent requests were not merged into shared steps"


def test_streams_over_the_limit_get_429_with_retry_after(server):
    socks = [_open_stream(server, {"model": "moe", "max_tokens": MAX_TOKENS}) for _ in range(2)]
    try:
        req = urllib.request.Request(_url(server, "/v1/generate"), method="POST",
                                     data=json.dumps({"model": "moe", "stream": True, "max_tokens": 5}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 429 and e.value.headers["Retry-After"] == "1"
        with e.value:
            assert "concurrent streams" in json.loads(e.value.read())["error"]
    finally:
        for s in socks:
            s.close()
    _wait_for(lambda: server.models.open_streams == 0, "the stream slots to be freed")


def _read_until_closed(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    return got


def test_a_client_that_goes_silent_mid_request_is_dropped(generators):
    """A request line and one header, then nothing: the server closes the connection after --client-timeout."""
    with running(generators, Limits(client_timeout=0.5)) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
            assert _read_until_closed(sock) == b""
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:  # says nothing at all
            assert _read_until_closed(sock) == b""
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:  # body never comes
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            answer = _read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer


def test_connections_past_the_limit_get_503_with_retry_after(generators):
    with running(generators, Limits(max_connections=3, client_timeout=60)) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=60) for _ in range(3)]
        try:
            with urllib.request.urlopen(_url(srv, "/v1/health"), timeout=60):
                pass
        except urllib.error.HTTPError as e:
            with e:
                assert e.code == 503 and e.headers["Retry-After"] == "1"
        else:
            pytest.fail("a connection past --max-connections was served")
        finally:
            for s in idle:
                s.close()


def test_requests_past_the_limit_get_503_with_retry_after(generators):
    with running(generators, Limits(max_requests=1, max_tokens_limit=MAX_TOKENS)) as srv:
        sock = _open_stream(srv, {"model": "moe", "max_tokens": MAX_TOKENS})
        try:
            code, out = _post(srv, "/v1/generate", {"model": "names"})
            assert code == 503 and "requests at once" in out["error"]
            assert _post(srv, "/v1/score", {"model": "names", "text": "ava\n"})[0] == 503
            with urllib.request.urlopen(_url(srv, "/v1/health"), timeout=60) as r:  # health always answers
                assert r.status == 200
        finally:
            sock.close()


def test_a_prompt_past_the_limit_gets_400_naming_the_prompt_and_the_flag(generators):
    # A prompt is read in one pass that holds up its model's other requests: --max-prompt-tokens bounds it.
    names = generators["names"]
    with running(generators, Limits(max_prompt_tokens=6, max_tokens_limit=MAX_TOKENS)) as srv:
        long, short = "mariann", "mari"
        assert len(names.encode_prompt(long)) == 7 and len(names.encode_prompt(short)) == 4
        code, out = _post(srv, "/v1/generate", {"model": "names", "prompt": long, "max_tokens": 2})
        assert code == 400 and out["param"] == "prompt"
        assert out["error"] == "the prompt is 7 tokens; this server reads at most 6 (lstmgen serve --max-prompt-tokens)"
        code, out = _post(srv, "/v1/completions", {"model": "names", "prompt": long, "max_tokens": 2})
        assert code == 400 and out["error"]["param"] == "prompt" and "at most 6" in out["error"]["message"]
        code, out = _post(srv, "/v1/completions", {"model": "names", "prompt": names.encode_prompt(long), "max_tokens": 2})
        assert code == 400 and out["error"]["param"] == "prompt"  # token ids count the same
        assert _post(srv, "/v1/generate", {"model": "names", "prompt": short, "max_tokens": 2})[0] == 200
        with urllib.request.urlopen(_url(srv, "/tokenizer_info?model=names"), timeout=60) as r:
            assert json.loads(r.read())["model_max_length"] == 6  # what lm-eval and other clients truncate to


def test_api_key_is_required_everywhere_but_health(generators):
    with running(generators, api_key="s3cret") as srv:
        with urllib.request.urlopen(_url(srv, "/v1/health"), timeout=60) as r:
            assert r.status == 200
        for path in ("/v1/models", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(_url(srv, path), timeout=60)
            e.value.close()
            assert e.value.code == 401 and e.value.headers["WWW-Authenticate"] == "Bearer"
        for key in (None, "wrong", "s3cre", "S3cret", "s3cret2"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            code, out = _post(srv, "/v1/generate", {"model": "names"}, headers=headers)
            assert code == 401 and "API key" in out["error"]
        code, out = _post(srv, "/v1/completions", {"model": "names"}, headers={"Authorization": "Bearer nope"})
        assert code == 401 and out["error"]["type"] == "authentication_error"
        code, out = _post(srv, "/v1/generate", {"model": "names", "seed": 4}, headers={"Authorization": "Bearer s3cret"})
        assert code == 200 and out["seed"] == 4


def test_cors_lets_the_named_origin_in_and_no_other(generators):
    with running(generators, cors_origins=["https://app.example"], api_key="k") as srv:
        def preflight(origin):
            req = urllib.request.Request(_url(srv, "/v1/completions"), method="OPTIONS", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, r.headers
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, e.headers

        status, headers = preflight("https://app.example")
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "authorization" in headers["Access-Control-Allow-Headers"].lower()
        status, headers = preflight("https://evil.example")
        assert status == 400 and headers["Access-Control-Allow-Origin"] is None
        req = urllib.request.Request(_url(srv, "/v1/models"), headers={"Origin": "https://app.example",
                                                                       "Authorization": "Bearer k"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"


def _metric(text: str, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include these, read with prometheus-client's own parser."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_metrics_count_requests_tokens_and_batch(generators):
    with running(generators) as srv:
        assert _post(srv, "/v1/generate", {"model": "moe", "max_tokens": 7, "seed": 1})[0] == 200
        assert _post(srv, "/v1/generate", {"model": "moe", "temperature": -1})[0] == 400
        sock = _open_stream(srv, {"model": "moe", "max_tokens": MAX_TOKENS})
        try:
            with urllib.request.urlopen(_url(srv, "/metrics"), timeout=60) as r:
                assert r.headers["Content-Type"].startswith("text/plain")
                text = r.read().decode()
        finally:
            sock.close()
    assert _metric(text, "lstmgen_http_requests_total", path="/v1/generate", status="200") == 1
    assert _metric(text, "lstmgen_http_requests_total", path="/v1/generate", status="400") == 1
    assert _metric(text, "lstmgen_generated_tokens_total", model="moe") == 7
    assert _metric(text, "lstmgen_http_request_duration_seconds_count", path="/v1/generate") == 2
    assert _metric(text, "lstmgen_batch_rows", model="moe") == 1
    assert _metric(text, "lstmgen_batch_occupancy", model="moe") == pytest.approx(1 / 64)
    assert _metric(text, "lstmgen_open_streams") == 1 and _metric(text, "lstmgen_open_connections") >= 2


def test_access_log_has_latency_and_tokens(generators):
    lines = []
    with running(generators, access_log=lines.append, api_key="k") as srv:
        auth = {"Authorization": "Bearer k"}
        assert _post(srv, "/v1/generate", {"model": "moe", "max_tokens": 5, "seed": 2}, headers=auth)[0] == 200
        assert _post(srv, "/v1/generate", {"model": "moe", "top_k": -1}, headers=auth)[0] == 400
        assert _post(srv, "/v1/generate", {"model": "moe"})[0] == 401
        assert _post(srv, "/v1/completions", {"model": "nope"}, headers=auth)[0] == 404
    assert len(lines) == 4
    assert '"POST /v1/generate" 200 ' in lines[0] and lines[0].endswith(" ms 5 tokens")
    # every 4xx says why, in the same one line the client got
    assert lines[1].endswith("0 tokens: top_k must be an integer in [0, 1000000], got -1")
    assert lines[2].endswith("missing or wrong API key: send the header 'Authorization: Bearer <key>'")
    assert '"POST /v1/completions" 404' in lines[3] and "no model named 'nope'" in lines[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_binds_loopback_and_stops_gracefully_on_sigterm(artifacts):
    """SIGTERM while a request runs: the request finishes, then the process exits 0."""
    port = _free_port()
    with subprocess.Popen([sys.executable, "-m", "lstmgen", "serve", str(artifacts["moe"]), "--port", str(port)],
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        try:
            line = proc.stderr.readline()
            assert f"http://127.0.0.1:{port}" in line, line
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=60) as r:
                name = json.loads(r.read())["models"][0]
            sock = _open_stream(type("S", (), {"port": port}), {"model": name, "max_tokens": 300, "seed": 5})
            proc.send_signal(signal.SIGTERM)
            answer = _read_until_closed(sock).decode()
            sock.close()
            assert "event: done" in answer
            assert proc.wait(timeout=60) == 0
            err = proc.stderr.read()
            assert "stopped" in err and "Traceback" not in err
        finally:
            proc.kill()


def test_cli_warns_when_serving_beyond_loopback_without_a_key(artifacts):
    with subprocess.Popen([sys.executable, "-m", "lstmgen", "serve", str(artifacts["names"]), "--host", "0.0.0.0",
                           "--port", "0"], stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "LSTMGEN_API_KEY": ""}) as proc:
        try:
            err = proc.stderr.read()
            assert proc.wait(timeout=60) == 2 and "LSTMGEN_API_KEY" in err and "is empty" in err
        finally:
            proc.kill()
    env = {k: v for k, v in os.environ.items() if k != "LSTMGEN_API_KEY"}
    with subprocess.Popen([sys.executable, "-m", "lstmgen", "serve", str(artifacts["names"]), "--host", "0.0.0.0",
                           "--port", "0"], stderr=subprocess.PIPE, text=True, env={**env, "PYTHONUNBUFFERED": "1"}) as proc:
        try:
            line = proc.stderr.readline()
            assert line.startswith("warning: serving on 0.0.0.0 without an API key"), line
            assert "serving" in proc.stderr.readline()  # up, and SIGTERM is handled from here on
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()


def test_the_engine_does_not_import_the_http_stack():
    code = "import sys, lstmgen; from lstmgen import cli; sys.exit(bool({'starlette', 'uvicorn'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_serve_without_the_serve_extra_says_what_to_install():
    code = ("import sys; sys.modules['uvicorn'] = None; from lstmgen.cli import main;"
            " sys.exit(main(['serve', 'names', '--port', '0']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["lstmgen: error: `lstmgen serve` needs uvicorn, which is not installed:"
                                               " pip install 'lstmgen[serve]'"]


def test_a_request_naming_no_model_gets_the_default_model(generators):
    with running(generators) as first, running(generators, default_model="moe") as chosen:
        status, out = _post(first, "/v1/generate", {"num": 2, "seed": 1})
        assert status == 200 and out["model"] == "names" and out["samples"] == generators["names"].generate(2, seed=1)
        assert _post(chosen, "/v1/generate", {"seed": 1, "max_tokens": 5})[1]["model"] == "moe"
