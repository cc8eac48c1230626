"""Load test of `lstmgen serve` on loopback: N concurrent HTTP clients against the same requests sent
one at a time, every response checked against the seeded single-request result.

    python -m lstmgen.bench.serve_load --model moe --clients 32 --requests 128 --max-tokens 64

Bounded in count and time; the server runs in this process on a free loopback port.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from lstmgen import Generator
from lstmgen.server import Limits, make_server


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def run(model: str, clients: int, requests: int, max_tokens: int, threads: int | None = None) -> dict:
    gen = Generator.load(model, threads=threads)
    name = gen.manifest.name or gen.folder.name
    server = make_server({name: gen}, "127.0.0.1", 0, Limits(max_batch=max(256, clients * 4)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    port = server.port
    try:
        bodies = [{"model": name, "num": 1 + i % 2, "seed": 1000 + i, "max_tokens": max_tokens, "temperature": 0.9}
                  for i in range(requests)]
        expected = [gen.generate(**{k: v for k, v in b.items() if k != "model"}) for b in bodies]
        tokens = sum(len(gen.tokenizer.encode(s)) for out in expected for s in out)
        _post(port, bodies[0])  # warm the scheduler thread (Numba kernel, buffers)
        t0 = time.perf_counter()
        one_by_one = [_post(port, b)["samples"] for b in bodies]
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(lambda b: _post(port, b)["samples"], bodies))
        t_concurrent = time.perf_counter() - t0
    finally:
        server.stop()
        thread.join(60)
    return {"model": name, "clients": clients, "requests": requests, "max_tokens": max_tokens,
            "generated_tokens": tokens, "all_equal_alone": one_by_one == expected and together == expected,
            "serial_req_per_s": requests / t_serial, "serial_tokens_per_s": tokens / t_serial,
            "concurrent_req_per_s": requests / t_concurrent, "concurrent_tokens_per_s": tokens / t_concurrent,
            "speedup": t_serial / t_concurrent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="names")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    r = run(a.model, a.clients, a.requests, a.max_tokens, a.threads)
    print(json.dumps(r, indent=1))
    return 0 if r["all_equal_alone"] else 1


if __name__ == "__main__":
    sys.exit(main())
