"""`lstmgen serve`: endpoints, streaming, validation, disconnects, shutdown, and batching == alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from lstmgen import Generator
from lstmgen.server import Limits, make_server


@pytest.fixture(scope="module")
def server(artifacts):
    models = {"names": Generator.load(artifacts["names"]), "moe": Generator.load(artifacts["moe"])}
    srv = make_server(models, "127.0.0.1", 0, Limits(max_body=4096, max_tokens=300, max_batch=64, max_streams=2))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.app.close()
    srv.server_close()


def _url(srv, path):
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _post(srv, path, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(_url(srv, path), data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _sse(srv, body):
    req = urllib.request.Request(_url(srv, "/v1/generate"), data=json.dumps({**body, "stream": True}).encode(),
                                 method="POST")
    pieces, final = [], None
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
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
        models = json.loads(r.read())["models"]
    assert {m["name"]: m["records"] for m in models} == {"names": True, "moe": False}


def test_generate_equals_the_library(server):
    status, out = _post(server, "/v1/generate", {"model": "names", "num": 5, "temperature": 0.9, "seed": 1})
    assert status == 200 and out["seed"] == 1
    assert out["samples"] == server.app.models["names"].generate(num=5, temperature=0.9, seed=1)


def test_novel_requests_report_the_seed_they_used(server):
    status, out = _post(server, "/v1/generate", {"model": "names", "num": 4, "novel": True})
    assert status == 200 and len(out["samples"]) == 4
    assert out["samples"] == server.app.models["names"].generate(num=4, novel=True, seed=out["seed"])


def test_generate_passes_logprobs_echo_bias_ban_and_prompts_through(server):
    body = {"num": 2, "prompts": ["ma", "jo"], "seed": 4, "echo": False, "logprobs": 2, "bias": {"o": 1.0},
            "ban": ["e"]}
    status, out = _post(server, "/v1/generate", {"model": "names", **body})
    assert status == 200
    lib = server.app.models["names"].generate(**body)
    assert out["samples"] == [[s.to_dict() for s in group] for group in lib]
    code, err = _post(server, "/v1/generate", {"model": "names", "bias": {"Q": 1}})
    assert code == 400 and "'Q' is not a token" in err["error"]


def test_stream_sends_pieces_that_join_to_the_sample(server):
    body = {"model": "moe", "prompt": "moe_szyslak:", "max_tokens": 40, "seed": 3}
    pieces, final = _sse(server, body)
    expected = server.app.models["moe"].generate(num=1, prompt="moe_szyslak:", max_tokens=40, seed=3)[0]
    assert len(pieces) > 2 and "".join(pieces) == final["text"] == expected
    pieces, final = _sse(server, {**body, "echo": False, "stop": ["homer"]})
    expected = server.app.models["moe"].generate(num=1, prompt="moe_szyslak:", max_tokens=40, seed=3, echo=False,
                                                 stop=["homer"])[0]
    assert "".join(pieces) == final["text"] == expected and not expected.startswith("moe_szyslak:")


def test_score_endpoint(server):
    status, out = _post(server, "/v1/score", {"model": "names", "text": "emma\nava\n"})
    assert status == 200 and out["tokens"] == 9
    assert out["nats"] == pytest.approx(server.app.models["names"].score("emma\nava\n").nats)


@pytest.mark.parametrize("body, status, match", [
    ({"model": "names", "temperature": -1}, 400, "temperature"),
    ({"model": "names", "colour": "red"}, 400, "unknown field"),
    ({"model": "names", "max_tokens": 10_000}, 400, "limit of 300"),
    ({"model": "nope"}, 400, "no model named"),
    ({"temperature": 1.0}, 400, "say which model"),
    ({"model": "names", "num": 0}, 400, "num"),
    ({"model": "names", "stream": True, "num": 3}, 400, "one sample"),
])
def test_bad_requests_get_400_with_one_line(server, body, status, match):
    code, out = _post(server, "/v1/generate", body)
    assert code == status and match in out["error"] and "\n" not in out["error"]


def test_bad_json_big_bodies_and_unknown_paths(server):
    assert _post(server, "/v1/generate", None, raw=b"{nope")[0] == 400
    assert _post(server, "/v1/generate", None, raw=b"[1, 2]")[0] == 400
    assert _post(server, "/v1/generate", None, raw=b"x" * 5000)[0] == 413
    assert _post(server, "/v1/other", {})[0] == 404


def _open_stream(srv, body) -> socket.socket:
    """A raw client that starts a stream and reads until its first event."""
    data = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=30)
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    got = b""
    while b"data: " not in got:
        got += sock.recv(4096)
    return sock


def test_a_client_that_disconnects_frees_its_row(server):
    sched = server.app.schedulers["moe"]
    sock = _open_stream(server, {"model": "moe", "max_tokens": 300, "seed": 1})
    assert sched.rows_in_flight >= 1
    sock.close()
    deadline = time.monotonic() + 20
    while sched.rows_in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sched.rows_in_flight == 0


def test_concurrent_requests_are_batched_and_each_equals_its_alone_result(server):
    """The load test, bounded: 24 clients at once against the same work one request at a time."""
    gen = server.app.models["names"]
    sched = server.app.schedulers["names"]
    jobs = [{"model": "names", "num": 1 + i % 4, "seed": 100 + i, "temperature": 1.0, "top_k": 8 + i % 3}
            for i in range(24)]
    alone = [gen.generate(**{k: v for k, v in j.items() if k != "model"}) for j in jobs]
    steps_before = sched.steps
    t0 = time.perf_counter()
    serial = [_post(server, "/v1/generate", j)[1]["samples"] for j in jobs]
    t_serial = time.perf_counter() - t0
    serial_steps = sched.steps - steps_before
    t0 = time.perf_counter()
    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(lambda j: _post(server, "/v1/generate", j)[1]["samples"], jobs))
    t_together = time.perf_counter() - t0
    together_steps = sched.steps - steps_before - serial_steps
    assert serial == alone and together == alone
    assert together_steps < serial_steps, "concurrent requests were not merged into shared steps"
    tokens = sum(len(s) + 1 for out in alone for s in out)
    print(f"load: {len(jobs)} requests, {tokens} tokens; one at a time {len(jobs) / t_serial:.1f} req/s"
          f" {tokens / t_serial:.0f} tok/s ({serial_steps} steps); concurrent {len(jobs) / t_together:.1f} req/s"
          f" {tokens / t_together:.0f} tok/s ({together_steps} steps)")


def test_streams_over_the_limit_get_429(server):
    socks = [_open_stream(server, {"model": "moe", "max_tokens": 300}) for _ in range(2)]
    try:
        code, out = _post(server, "/v1/generate", {"model": "moe", "stream": True, "max_tokens": 5})
        assert code == 429 and "concurrent streams" in out["error"]
    finally:
        for s in socks:
            s.close()


def test_cli_serve_binds_loopback_and_stops_gracefully_on_sigterm(artifacts):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with subprocess.Popen([sys.executable, "-m", "lstmgen", "serve", str(artifacts["names"]), "--port", str(port)],
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        try:
            line = proc.stderr.readline()
            assert f"http://127.0.0.1:{port}" in line, line
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=10) as r:
                assert r.status == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert "stopped" in proc.stderr.read()
        finally:
            proc.kill()
