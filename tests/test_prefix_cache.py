"""The prefix-state cache (lstmgen.prefix_cache) and POST /v1/next: a hit never changes a text or a
score, a cached prefix of a longer prompt is used, the LRU stays within its bytes, and a server gives
the same answers with the cache on and off, also under concurrent requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lstmgen import Generator
from lstmgen.decoding import DecodeLoop
from lstmgen.prefix_cache import Entry, PrefixCache, prefix_hashes
from lstmgen.server import Limits
from lstmgen.server.schemas import NextResponse

from .conftest import DATA, serving, shipped

TEXT = (DATA / "tinyshakespeare.txt").read_text()[:6000]


@pytest.fixture(scope="module")
def gens(artifacts):
    return {name: Generator.load(path) for name, path in artifacts.items()}


def generated(gen, cache, prompt: str, **options) -> list[str]:
    jobs = gen.jobs(prompt=prompt, **options)
    DecodeLoop(gen.backend, gen.tokenizer, cache).run(jobs)
    return jobs[0].results()


def test_generation_through_the_cache_is_generation_without_it(gens):
    gen = gens["shakespeare"]
    view = PrefixCache(1 << 24).view("s", gen.backend)
    assert view.reads_in_parts_exactly  # fp32: a prefix of a longer prompt may be used
    options = {"num": 3, "max_tokens": 40, "seed": 4, "top_k": 20}
    for prompt, reused in ((TEXT[:700], 0), (TEXT[:700], 701), (TEXT[:1200], 701), (TEXT[:900], 701)):
        before = view.reused_tokens
        assert generated(gen, view, prompt, **options) == gen.generate(prompt=prompt, **options)
        assert view.reused_tokens - before == reused  # the start token and 700 characters, read once


def test_scores_through_the_cache_are_the_same_to_the_last_bit(gens):
    gen = gens["shakespeare"]
    view = PrefixCache(1 << 24).view("s", gen.backend)
    for text in (TEXT[:1500], TEXT[:1500], TEXT[:3000], TEXT[:2000]):  # miss, hit, longer, a prefix of it
        assert gen.score(text, cache=view) == gen.score(text)
    assert (view.hits, view.misses) == (3, 1)


def test_an_int8_model_gets_exact_hits_only(tmp_path):
    gen = Generator.load(shipped("shakespeare-int8"))
    view = PrefixCache(1 << 24).view("s8", gen.backend)
    assert not view.reads_in_parts_exactly  # its activations are quantised over the whole read
    options = {"max_tokens": 30, "seed": 2}
    for prompt in (TEXT[:400], TEXT[:600], TEXT[:400]):
        assert generated(gen, view, prompt, **options) == gen.generate(prompt=prompt, **options)
    assert (view.hits, view.reused_tokens) == (1, 401)
    assert gen.score(TEXT[:400], cache=view) == gen.score(TEXT[:400])


def test_the_lru_stays_within_its_bytes_and_keeps_the_recently_used(gens):
    gen = gens["names"]
    V, (L, H) = gen.tokenizer.vocab_size, gen.backend.state_shape

    def entry(ids):
        ids = np.asarray(ids, dtype=np.int32)
        return Entry("m", ids, np.zeros(V, np.float32), (np.zeros((L, 1, H), np.float32),) * 2)

    size = entry([1, 2]).nbytes
    cache = PrefixCache(3 * size + 10)
    view = cache.view("m", gen.backend)
    for ids in ([1, 2], [1, 3], [1, 4]):
        cache.put(entry(ids), int(prefix_hashes(np.array(ids))[-1]))
    assert cache.find("m", np.array([1, 2, 9]), prefix_hashes(np.array([1, 2, 9])), prefix=True, scored=False) is not None
    cache.put(entry([1, 5]), int(prefix_hashes(np.array([1, 5]))[-1]))  # [1, 3] is now the least recently used
    assert cache.entries("m") == 3 and cache.nbytes() <= cache.max_bytes
    found = {tuple(ids): cache.find("m", np.array(ids), prefix_hashes(np.array(ids)), prefix=False, scored=False)
             for ids in ([1, 2], [1, 3], [1, 4], [1, 5])}
    assert [k for k, v in found.items() if v is None] == [(1, 3)]
    assert view.reads_in_parts_exactly is not None


def test_the_longest_cached_prefix_is_chosen(gens):
    gen = gens["shakespeare"]
    view = PrefixCache(1 << 24).view("s", gen.backend)
    ids = [0, *gen.tokenizer.encode(TEXT[:300])]
    view.prefill(ids[:50])
    view.prefill(ids[:200])
    view.prefill(ids[:120])
    _, _, reused = view.read(ids)
    assert reused == 200


# -- the server, with the cache on and off ------------------------------------------------------------------
def post(srv, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def metric(srv, name: str, model: str) -> float:
    with urllib.request.urlopen(srv.url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and s.labels.get("model") == model)


@pytest.fixture(scope="module")
def servers(gens):
    chosen = {"shakespeare": gens["shakespeare"], "moe": gens["moe"]}
    with serving(chosen, Limits(max_tokens_limit=200, max_batch=64)) as on, \
            serving(chosen, Limits(max_tokens_limit=200, max_batch=64, prefix_cache_bytes=0)) as off:
        yield on, off


def requests_sharing_prefixes() -> list[tuple[str, dict]]:
    """Prompts that repeat and extend each other, over every endpoint that reads a prompt."""
    out = []
    for i in range(24):
        prompt = TEXT[: 600 + 150 * (i % 4)]
        out.append(("/v1/generate", {"model": "shakespeare", "prompt": prompt, "num": 2, "max_tokens": 30, "seed": i}))
        out.append(("/v1/completions", {"model": "shakespeare", "prompt": prompt, "max_tokens": 20, "seed": i}))
        out.append(("/v1/next", {"model": "shakespeare", "text": prompt + "a" * (i % 3), "top": 5}))
        out.append(("/v1/score", {"model": "shakespeare", "text": prompt}))
        out.append(("/v1/generate", {"model": "moe", "prompt": "homer_simpson: " + "beer " * (i % 5), "max_tokens": 20,
                                     "seed": i}))
        out.append(("/v1/chat/completions", {"model": "moe", "messages": [{"role": "user", "content": "beer " * (i % 3)
                                                                            + "moe"}], "max_tokens": 15, "seed": i}))
    return out


def without_ids(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in ("id", "created", "cached_tokens")}


def test_answers_are_the_same_with_the_cache_on_and_off_under_concurrent_requests(servers):
    on, off = servers
    work = requests_sharing_prefixes()
    with ThreadPoolExecutor(16) as pool:
        cached = list(pool.map(lambda r: post(on, *r), work))
        plain = list(pool.map(lambda r: post(off, *r), work))
    assert all(status == 200 for status, _ in cached + plain)
    assert [without_ids(a) for _, a in cached] == [without_ids(a) for _, a in plain]
    assert metric(on, "lstmgen_prefix_cache_hits_total", "shakespeare") > 50
    assert metric(on, "lstmgen_prefix_cache_reused_tokens_total", "shakespeare") > 30_000
    assert 0 < metric(on, "lstmgen_prefix_cache_bytes", "shakespeare") <= Limits().prefix_cache_bytes
    assert metric(off, "lstmgen_prefix_cache_hits_total", "shakespeare") == 0
    assert metric(on, "lstmgen_prefix_cache_hits_total", "moe") > 20  # generate and chat prompts repeat too


def test_next_lists_the_likeliest_tokens_a_session_would_draw(servers, gens):
    on, _ = servers
    status, answer = post(on, "/v1/next", {"model": "shakespeare", "text": TEXT[:500], "top": 4, "temperature": 1.0,
                                           "ban": ["e"]})
    assert status == 200
    NextResponse.model_validate(answer)
    session = gens["shakespeare"].session(prompt=TEXT[:500], temperature=1.0, ban=["e"])
    assert [(t["token"], t["probability"]) for t in answer["top"]] == session.top(4)
    assert answer["prompt_tokens"] == 500 and answer["text"] == TEXT[:500]
    status, again = post(on, "/v1/next", {"model": "shakespeare", "text": TEXT[:510], "top": 4})
    assert status == 200 and again["cached_tokens"] >= 500


@pytest.mark.parametrize("body, message", [
    ({"model": "shakespeare", "text": "\u00e9t\u00e9"}, "characters the model's vocabulary lacks"),
    ({"model": "shakespeare", "text": "a", "top": 101}, "top: input should be less than or equal to 100"),
    ({"model": "shakespeare", "text": "a", "num": 2}, "unknown field 'num'"),
    ({"model": "shakespeare", "text": "a", "top_p": 0}, "top_p must be a number in (0, 1], got 0"),
])
def test_next_refuses_bad_input_in_one_line(servers, body, message):
    status, answer = post(servers[0], "/v1/next", body)
    assert status == 400 and message in answer["error"] and "\n" not in answer["error"]


def test_the_cache_flag_comes_from_limits():
    import argparse

    from lstmgen.errors import LstmgenError
    from lstmgen.server.limits import add_cli_flags, from_args

    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    assert "--prefix-cache-bytes" in parser.format_help()
    assert from_args(parser.parse_args(["--prefix-cache-bytes", "0"])).prefix_cache_bytes == 0
    with pytest.raises(LstmgenError, match="--prefix-cache-bytes must be a number >= 0"):
        from_args(parser.parse_args(["--prefix-cache-bytes", "-1"]))


def test_the_benches_run_and_check_what_they_time(artifacts, tmp_path):
    from lstmgen.bench import prefix_cache, sessions

    r = prefix_cache.run(str(artifacts["shakespeare"]), chars=300, rounds=1, max_tokens=3, corpus=DATA / "tinyshakespeare.txt")
    assert r["texts_equal_with_and_without_cache"] and set(r["median_seconds"]) == set(r["seconds"])
    assert "ratio repeated / first" in prefix_cache.summary(r)
    row = sessions.measure(str(artifacts["names"]))
    assert row["saved_fresh"] > row["state_floats_bytes"] and row["live_sampled"] > row["live_fresh"]
    assert row["model"] in sessions.table([row])
