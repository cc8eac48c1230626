"""Bytes per step-by-step session (lstmgen.session) of each shipped model: its saved state, and what a
live session object holds.

    python -m lstmgen.bench.sessions --json out.json

Saved state: `len(Session.save())` after a short prompt with the model's defaults, and after 100
samples with a repetition penalty and a frequency penalty on (which add the repetition window and a
count per vocabulary entry). Live: the bytes a session object holds, counted object by object (every
NumPy array once, Python lists, strings and numbers; not the model, which sessions share), after its
prompt and after one sample: a session that has sampled holds its backend's step buffers (two states
and the logits, bound to ONNX Runtime; the bindings' own C++ objects are not counted). The process's
resident memory is no measure here: the allocator reuses what each prefill frees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lstmgen import Generator
from lstmgen.generator import shipped_models

PROMPTS = {"char": "ROMEO:\nWhat l", "word": "homer_simpson: i"}


def held_bytes(obj, seen: set | None = None) -> int:
    """Bytes an object holds: arrays (their memory once), containers and their items, plain attributes;
    the Generator and its backend (shared by every session) are left out."""
    seen = set() if seen is None else seen
    if id(obj) in seen or type(obj).__name__ in ("Generator", "OrtBackend", "Tokenizer", "SessionIOBinding",
                                                 "IOBinding", "SamplingParams"):
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):  # getsizeof counts an array's data when the array owns it
        base = obj.base
        if base is None or isinstance(base, np.ndarray):
            return sys.getsizeof(obj) + (held_bytes(base, seen) if base is not None else 0)
        if id(base) in seen:
            return sys.getsizeof(obj)
        seen.add(id(base))  # memory another object owns (ONNX Runtime's output)
        return sys.getsizeof(obj) + obj.nbytes
    size = sys.getsizeof(obj)
    if isinstance(obj, (list, tuple, set)):
        return size + sum(held_bytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return size + sum(held_bytes(k, seen) + held_bytes(v, seen) for k, v in obj.items())
    if hasattr(obj, "__dict__"):
        return size + held_bytes(vars(obj), seen)
    return size


def measure(model: str) -> dict:
    gen = Generator.load(model)
    prompt = "ma" if gen.records else PROMPTS[gen.tokenizer.level]
    fresh = gen.session(prompt=prompt, seed=1)
    penalised = gen.session(prompt=prompt, seed=1, repetition_penalty=1.2, frequency_penalty=0.5)
    for _ in range(100):
        if penalised.ended:
            break
        penalised.sample()
    d = gen.manifest.dims
    out = {"model": model, "vocab": d.vocab_size, "layers": d.num_layers, "hidden": d.hidden_size,
           "state_floats_bytes": 2 * d.num_layers * d.hidden_size * 4, "saved_fresh": len(fresh.save()),
           "saved_after_100_with_penalties": len(penalised.save()), "prompt": prompt}
    session = gen.session(prompt=prompt, seed=2)
    out["live_fresh"] = held_bytes(session)
    session.sample()
    out["live_sampled"] = held_bytes(session)
    return out


def table(rows: list[dict]) -> str:
    lines = ["bytes per session: state = h and c; saved = Session.save() after the prompt, saved* = after 100 samples",
             "with penalties on; live = what a session object holds after its prompt, live+1 = after one sample",
             f"{'model':18} {'state':>6} {'saved':>7} {'saved*':>7} {'live':>7} {'live+1':>7}"]
    for r in rows:
        lines.append(f"{r['model']:18} {r['state_floats_bytes']:6d} {r['saved_fresh']:7d} {r['saved_after_100_with_penalties']:7d}"
                     f" {r['live_fresh']:7d} {r['live_sampled']:7d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.sessions", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None, help="default: every shipped model")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here (and a .txt beside it)")
    a = p.parse_args(argv)
    rows = [measure(m) for m in a.models or shipped_models()]
    text = table(rows)
    print(text)
    if a.json is not None:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
        a.json.with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
