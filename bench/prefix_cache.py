"""Time to the first token of a long prompt with the prefix-state cache: the first request against the
same prompt repeated, and against a server without the cache, measured side by side in one run.

    python -m lstmgen.bench.prefix_cache --model shakespeare --chars 5000 --rounds 8 --json out.json

Run from the repository's root: the prompts come from ../shared/data (or --corpus FILE).

Two servers run in this process on loopback, one with the cache (the default bound) and one without
(--prefix-cache-bytes 0). Each round takes a new slice of the model's corpus as its prompt (so the
first request of a round finds nothing cached) and sends, interleaved: the first request and the
repeated one to each server, then /v1/next for the prompt and for the prompt plus one character (a
cached prefix of a longer text). A first token is the first Server-Sent Event of a streamed
/v1/generate (echo off); every text is checked equal across the two servers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from lstmgen import Generator
from lstmgen.server import Limits, make_server

CORPORA = {"char": "tinyshakespeare.txt", "word": "moes_tavern_lines.txt"}  # in ../shared/data, by the model's level


def first_token(port: int, body: dict) -> tuple[float, str]:
    """Seconds to the first streamed piece of a /v1/generate, and the whole sample's text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/generate", body=json.dumps({**body, "stream": True, "echo": False}))
        r = conn.getresponse()
        first, text = None, None
        for line in r:
            if line.startswith(b"data: ") and first is None:
                first = time.perf_counter() - t0
            if line.startswith(b"event: done"):
                text = json.loads(next(r)[6:])["text"]
        return first, text
    finally:
        conn.close()


def answer(port: int, path: str, body: dict) -> tuple[float, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        t0 = time.perf_counter()
        conn.request("POST", path, body=json.dumps(body))
        out = json.loads(conn.getresponse().read())
        return time.perf_counter() - t0, out
    finally:
        conn.close()


def run(model: str, chars: int, rounds: int, max_tokens: int, corpus: Path | None = None) -> dict:
    gen = Generator.load(model)
    name = gen.manifest.name or gen.folder.name
    corpus = corpus or Path.cwd().parent / "shared" / "data" / CORPORA[gen.tokenizer.level]
    if not corpus.is_file():
        raise SystemExit(f"no corpus at {corpus}: run from the repository's root beside ../shared/data, or give --corpus FILE")
    corpus = corpus.read_text(encoding="utf-8")
    servers = {"cache": make_server({name: gen}, "127.0.0.1", 0, Limits()),
               "no_cache": make_server({name: gen}, "127.0.0.1", 0, Limits(prefix_cache_bytes=0))}
    threads = [threading.Thread(target=s.run, daemon=True) for s in servers.values()]
    for t in threads:
        t.start()
    times: dict[str, list[float]] = {k: [] for k in ("cache_first", "cache_repeat", "no_cache_first", "no_cache_repeat",
                                                     "next_first", "next_repeat", "next_one_more_char")}
    same = True
    try:
        for s in servers.values():  # compile the sampler, warm ONNX Runtime: not part of any figure
            first_token(s.port, {"model": name, "prompt": corpus[:200], "max_tokens": 2, "seed": 0})
        for i in range(rounds):
            prompt = corpus[(i + 1) * chars: (i + 2) * chars]
            body = {"model": name, "prompt": prompt, "max_tokens": max_tokens, "seed": i}
            texts = []
            for label, s in servers.items():
                for kind in ("first", "repeat"):
                    seconds, text = first_token(s.port, body)
                    times[f"{label}_{kind}"].append(seconds)
                    texts.append(text)
            same &= len(set(texts)) == 1
            port = servers["cache"].port
            for kind, text in (("next_first", prompt[:-1]), ("next_repeat", prompt[:-1]), ("next_one_more_char", prompt)):
                seconds, out = answer(port, "/v1/next", {"model": name, "text": text, "top": 5})
                times[kind].append(seconds)
    finally:
        for s in servers.values():
            s.stop()
        for t in threads:
            t.join(60)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "prompt_chars": chars, "rounds": rounds, "max_tokens": max_tokens,
            "texts_equal_with_and_without_cache": same, "median_seconds": med, "seconds": times,
            "repeat_over_first_with_cache": med["cache_repeat"] / med["cache_first"],
            "repeat_over_first_without_cache": med["no_cache_repeat"] / med["no_cache_first"],
            "next_repeat_over_first": med["next_repeat"] / med["next_first"],
            "next_one_more_char_over_first": med["next_one_more_char"] / med["next_first"]}


def summary(r: dict) -> str:
    m = r["median_seconds"]
    return "\n".join([
        f"prefix-state cache, {r['model']}: a {r['prompt_chars']:,}-character prompt, median of {r['rounds']} rounds",
        f"  first token, first request   {m['cache_first'] * 1000:8.1f} ms   (no cache: {m['no_cache_first'] * 1000:.1f} ms)",
        f"  first token, same prompt     {m['cache_repeat'] * 1000:8.1f} ms   (no cache: {m['no_cache_repeat'] * 1000:.1f} ms)",
        f"  ratio repeated / first       {r['repeat_over_first_with_cache']:8.3f}     (no cache: "
        f"{r['repeat_over_first_without_cache']:.3f})",
        f"  /v1/next first / same / +1 character: {m['next_first'] * 1000:.1f} / {m['next_repeat'] * 1000:.1f} /"
        f" {m['next_one_more_char'] * 1000:.1f} ms",
        f"  texts equal with and without the cache: {r['texts_equal_with_and_without_cache']}"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.prefix_cache", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shakespeare")
    p.add_argument("--chars", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=20)
    p.add_argument("--corpus", type=Path, default=None, help="text to cut the prompts from (default: the model's corpus"
                   " in ../shared/data)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here (and a .txt beside it)")
    a = p.parse_args(argv)
    r = run(a.model, a.chars, a.rounds, a.max_tokens, a.corpus)
    text = summary(r)
    print(text)
    if a.json is not None:
        a.json.write_text(json.dumps(r, indent=1) + "\n")
        a.json.with_suffix(".txt").write_text(text + "\n")
    return 0 if r["texts_equal_with_and_without_cache"] else 1


if __name__ == "__main__":
    sys.exit(main())
