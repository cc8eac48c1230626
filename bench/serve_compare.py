"""The old `lstmgen serve` (standard library, bench/old_server.py) against the new one (Starlette on
uvicorn), in one run, each as its own process on a free loopback port:

- requests/s, tokens/s, p50/p99 latency at 1, 32 and 256 concurrent keep-alive clients (the old
  server speaks HTTP/1.0, so its clients reconnect for every request; latency includes that);
  every response is checked against the same request alone (`Generator.generate`, same seed);
- with 2,000 slow clients connected (each sent a request line and one header, then went silent): the
  latency of one generate, the server's threads and memory, and how many of the slow connections
  the server had closed a few seconds after its client timeout.

    nice python -m lstmgen.bench.serve_compare --model moe --json bench/results/serve.json

Bounded in count and time; the clients are asyncio sockets in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from lstmgen import Generator
from lstmgen.trainer.machine import describe

SERVERS = {"old": [sys.executable, "-m", "lstmgen.bench.old_server"],
           "new": [sys.executable, "-m", "lstmgen", "serve", "--max-connections", "8192", "--max-requests", "1024"]}
LEVELS = ((1, 48), (32, 256), (256, 512))  # (clients, requests)
SLOW_CLIENTS = 2000
CLIENT_TIMEOUT = 5.0  # the new server's --client-timeout in this run
REPEATS = 3  # each level runs this many times per server, old and new taking turns; the best run counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model: str, port: int) -> tuple[subprocess.Popen, list[str]]:
    """The server process, and its log lines as they come (read by a thread, so that the pipe never fills)."""
    extra = ["--client-timeout", str(CLIENT_TIMEOUT)] if kind == "new" else []
    proc = subprocess.Popen([*SERVERS[kind], model, "--port", str(port), *extra], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if f":{port}" not in line:
        proc.kill()
        raise RuntimeError(f"the {kind} server did not start: {line}")
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    return proc, log


def process_figures(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"threads": int(status["Threads"]), "rss_mb": int(status["VmRSS"].split()[0]) / 1024}


async def post(conn, port: int, body: bytes):
    """One POST /v1/generate; reuses `conn` (reader, writer) when the server keeps it alive."""
    if conn is None:
        conn = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = conn
    writer.write(b"POST /v1/generate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    version, status = (await reader.readline()).split(b" ", 2)[:2]
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    data = await reader.readexactly(int(headers["content-length"]))
    if version == b"HTTP/1.0" or headers.get("connection", "").lower() == "close":
        writer.close()
        conn = None
    return int(status), json.loads(data), conn


async def load(port: int, clients: int, bodies: list[bytes]) -> tuple[list[float], list[dict], float]:
    latencies: list[float] = []
    answers: list[dict] = [{}] * len(bodies)

    async def client(indices: range) -> None:
        conn = None
        for i in indices:
            t0 = time.perf_counter()
            status, answers[i], conn = await post(conn, port, bodies[i])
            latencies.append(time.perf_counter() - t0)
            assert status == 200, answers[i]
        if conn is not None:
            conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(range(c, len(bodies), clients)) for c in range(clients)))
    return latencies, answers, time.perf_counter() - t0


async def slow_clients(port: int, n: int) -> list:
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/generate HTTP/1.1\r\nHost: bench\r\n")
        conns.append((reader, writer))
    return conns


async def closed_by_server(conns) -> int:
    async def closed(reader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(4096), 0.05) == b""
        except (asyncio.TimeoutError, ConnectionError):
            return False
    return sum(await asyncio.gather(*(closed(r) for r, _ in conns)))


def run(model: str, max_tokens: int) -> dict:
    gen = Generator.load(model)
    name = gen.manifest.name or gen.folder.name
    expected = {s: gen.generate(num=1, seed=s, max_tokens=max_tokens, temperature=0.9) for s in range(32)}
    ports = {kind: free_port() for kind in SERVERS}
    procs = {kind: start(kind, model, port) for kind, port in ports.items()}
    try:
        result = asyncio.run(measure(ports, {k: p.pid for k, (p, _) in procs.items()}, gen, name, max_tokens, expected))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=60)
    for s in result["slow_clients"]:
        s["tracebacks_in_log"] = sum(line.startswith("Traceback") for line in procs[s["server"]][1])
    return {"machine": describe(), "model": name, "max_tokens": max_tokens, "client_timeout_new_s": CLIENT_TIMEOUT,
            "repeats": REPEATS, **result}


def request_body(name: str, seed: int, max_tokens: int) -> bytes:
    return json.dumps({"model": name, "seed": seed, "max_tokens": max_tokens, "temperature": 0.9}).encode()


async def measure(ports: dict, pids: dict, gen: Generator, name: str, max_tokens: int, expected: dict) -> dict:
    for port in ports.values():  # warm up: kernels, buffers, threads
        await load(port, 4, [request_body(name, s, max_tokens) for s in range(8)])
    best: dict = {}
    all_equal = True
    for _ in range(REPEATS):
        for clients, requests in LEVELS:
            for kind, port in ports.items():
                row = await level(kind, port, clients, requests, gen, name, max_tokens, expected)
                all_equal = all_equal and row["all_equal_alone"]
                if (kind, clients) not in best or row["req_per_s"] > best[kind, clients]["req_per_s"]:
                    best[kind, clients] = row
    levels = [best[kind, clients] for kind in ports for clients, _ in LEVELS]
    slow = [await slow_client_check(kind, ports[kind], pids[kind], name, max_tokens, expected) for kind in ports]
    return {"levels": levels, "all_equal_alone": all_equal, "slow_clients": slow}


async def level(kind: str, port: int, clients: int, requests: int, gen: Generator, name: str, max_tokens: int,
                expected: dict) -> dict:
    seeds = [i % len(expected) for i in range(requests)]
    latencies, answers, seconds = await load(port, clients, [request_body(name, s, max_tokens) for s in seeds])
    tokens = sum(len(gen.tokenizer.encode(a["samples"][0])) for a in answers)
    row = {"server": kind, "clients": clients, "requests": requests, "req_per_s": requests / seconds,
           "tokens_per_s": tokens / seconds, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
           "p99_ms": 1000 * float(np.percentile(latencies, 99)),
           "all_equal_alone": all(a["samples"] == expected[s] for a, s in zip(answers, seeds))}
    print(f"  {kind} {clients:>3} clients: {row['req_per_s']:7.1f} req/s {row['tokens_per_s']:8.0f} tok/s"
          f" p50 {row['p50_ms']:7.1f} ms p99 {row['p99_ms']:7.1f} ms", file=sys.stderr)
    return row


async def slow_client_check(kind: str, port: int, pid: int, name: str, max_tokens: int, expected: dict) -> dict:
    before = process_figures(pid)
    conns = await slow_clients(port, SLOW_CLIENTS)
    t0 = time.perf_counter()
    status, answer, _ = await post(None, port, request_body(name, 0, max_tokens))
    generate_ms = 1000 * (time.perf_counter() - t0)
    during = process_figures(pid)
    await asyncio.sleep(CLIENT_TIMEOUT + 3)
    closed = await closed_by_server(conns)
    for _, w in conns:
        w.close()
    print(f"  {kind} with {SLOW_CLIENTS} slow clients: generate {generate_ms:.0f} ms, threads {before['threads']} ->"
          f" {during['threads']}, RSS {before['rss_mb']:.0f} -> {during['rss_mb']:.0f} MB, closed by server {closed}",
          file=sys.stderr)
    return {"server": kind, "slow_connections": SLOW_CLIENTS, "generate_ms": generate_ms,
            "generate_ok": status == 200 and answer["samples"] == expected[0], "threads_before": before["threads"],
            "threads_with_slow": during["threads"], "rss_mb_before": before["rss_mb"], "rss_mb_with_slow": during["rss_mb"],
            "closed_by_server": closed, "checked_after_s": CLIENT_TIMEOUT + 3}


def table(r: dict) -> str:
    lines = [f"lstmgen serve, old (stdlib, HTTP/1.0) vs new (Starlette + uvicorn): model {r['model']},"
             f" {r['max_tokens']} tokens per request", f"machine: {r['machine']}", "",
             f"best of {r['repeats']} runs per row, old and new taking turns; every answer equal to its request alone:"
             f" {r['all_equal_alone']}", "",
             "server  clients  requests    req/s    tokens/s   p50 ms   p99 ms"]
    for row in r["levels"]:
        lines.append(f"{row['server']:<6} {row['clients']:>8} {row['requests']:>9} {row['req_per_s']:>8.1f}"
                     f" {row['tokens_per_s']:>11.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}")
    lines += ["", f"with {SLOW_CLIENTS} slow clients (request line and one header, then silence):",
              "server  generate ms  ok    threads before/with   RSS MB before/with   closed by server after"
              "          tracebacks in the log (whole run)"]
    for s in r["slow_clients"]:
        lines.append(f"{s['server']:<6} {s['generate_ms']:>12.0f}  {str(s['generate_ok']):<5} {s['threads_before']:>8} /"
                     f" {s['threads_with_slow']:<8} {s['rss_mb_before']:>10.0f} / {s['rss_mb_with_slow']:<8.0f}"
                     f" {s['closed_by_server']:>4} of {s['slow_connections']} after {s['checked_after_s']:g} s"
                     f" {s['tracebacks_in_log']:>8}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.serve_compare", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="moe", help="shipped model or artifact folder (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per request (default %(default)s)")
    p.add_argument("--json", default=None, help="write the results here, and a table beside it as .txt (default: none)")
    a = p.parse_args(argv)
    r = run(a.model, a.max_tokens)
    print(table(r), end="")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n")
        Path(a.json).with_suffix(".txt").write_text(table(r))
    ok = r["all_equal_alone"] and all(s["generate_ok"] for s in r["slow_clients"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
