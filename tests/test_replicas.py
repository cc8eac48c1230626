"""Scale-out for real: two `lstmgen serve` replicas behind Debian's nginx, configured as the README says.

Seeded requests go through nginx while one replica is killed (SIGKILL, mid-traffic): none is lost,
because nginx passes a request whose replica failed before answering to the other one
(`proxy_next_upstream ... non_idempotent`: generation has no side effects, so a POST may be sent
twice), and every text equals what one process writes for the same seed. Needs `nginx` on PATH
(`apt-get install nginx`; .ci/run installs it); without it the test skips and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lstmgen import Generator

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
REQUESTS = 48
KILL_AFTER = 12  # answers received before replica A is killed: the kill lands mid-traffic, never on a timer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_conf(folder: Path, port: int, replicas: list[int]) -> Path:
    """The README's configuration (upstream, keep-alive, no buffering), with the retry to the next replica."""
    servers = "".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=30s; " for p in replicas)
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, nginx's workers would run as nobody
    conf = folder / "nginx.conf"
    conf.write_text(f"""{user}daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$status $upstream_addr';
    access_log {folder}/access.log upstreams;
    client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fcgi; uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
    upstream lstmgen {{ least_conn; {servers}keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://lstmgen;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
        }}
    }}
}}
""")
    return conf


def start_replica(model: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "lstmgen", "serve", str(model), "--port", str(port), "--threads", "1"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # "serving ... on http://..." once it answers
    assert f":{port}" in line, line
    threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()  # keep reading its log (a full pipe blocks it)
    return proc


def _drain(stream) -> None:
    try:
        stream.read()
    except ValueError:  # closed at the end of the test
        pass


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def post(port: int, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, json.loads(r.read())


@pytest.mark.skipif(NGINX is None, reason="needs nginx: apt-get install nginx")
def test_no_request_is_lost_when_a_replica_dies_behind_nginx(artifacts, tmp_path):
    model = artifacts["moe"]
    gen = Generator.load(model)
    a_port, b_port, front = free_port(), free_port(), free_port()
    replicas = [start_replica(model, a_port), start_replica(model, b_port)]
    nginx = subprocess.Popen([NGINX, "-c", str(nginx_conf(tmp_path, front, [a_port, b_port])), "-p", str(tmp_path)],
                             stderr=subprocess.DEVNULL)  # it logs to error.log in tmp_path
    answered = threading.Semaphore(0)
    try:
        wait_for_port(front)
        bodies = [{"model": gen.manifest.name, "seed": i, "num": 2, "max_tokens": 120} for i in range(REQUESTS)]

        def send(body):
            out = post(front, body)
            answered.release()
            return out

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, b) for b in bodies]
            for _ in range(KILL_AFTER):
                answered.acquire()
            replicas[0].send_signal(signal.SIGKILL)
            results = [f.result() for f in futures]
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(30)
        for r in replicas:
            r.kill()
            r.wait(30)
            r.stderr.close()
    assert [status for status, _ in results] == [200] * REQUESTS
    for body, (_, out) in zip(bodies, results):
        assert out["samples"] == gen.generate(num=2, max_tokens=120, seed=body["seed"])  # every text, as one process
    log = (tmp_path / "access.log").read_text().splitlines()
    assert any("," in line for line in log), "no request was passed on to the other replica"
