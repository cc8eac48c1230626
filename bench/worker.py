"""One bench process: one backend on one model over the batch sizes; prints one JSON line.

Each batch size reports every variant it timed (torch-tuned times several, the others one); the
suite picks the row's figure from them.

Run as `python -m lstmgen.bench.worker '<json job>'` by lstmgen.bench.suite, so that each backend's
peak memory and thread settings are its own. Every backend does the same work: from one start
token, generate `steps` tokens for each of `batch` rows, sampling (temperature 0.8, top-k 40)
inside the timed loop.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

TEMPERATURE, TOP_K = 0.8, 40
DEFAULT_VARIANT = "eager nn.LSTM"  # PyTorch as users write it: the torch-default row, and a torch-tuned candidate


def _progress(job: dict, row: dict) -> dict:
    """One stderr line per batch size (the suite passes it on as the bench's progress); returns the row."""
    best = min(row["variants"], key=lambda v: v["seconds"])
    tokens_per_s = row["batch_size"] * job["steps"] / best["seconds"]
    print(f"{job['spec']['name']} {job['backend']} batch {row['batch_size']}: {tokens_per_s:,.0f} tok/s", file=sys.stderr,
          flush=True)
    return row


def _timed(run_once, repeats: int) -> dict:
    run_once(warmup=True)
    totals, firsts = [], []
    for _ in range(repeats):
        first, total = run_once(warmup=False)
        firsts.append(first)
        totals.append(total)
    return {"seconds": statistics.median(totals), "seconds_all": totals, "ttft_s": statistics.median(firsts)}


# -- engine ----------------------------------------------------------------------------------------
def engine_rows(job: dict) -> list[dict]:
    from lstmgen.decoding import DecodeLoop
    from lstmgen.generator import Generator

    gen = Generator.load(job["artifact"], device=job["device"], threads=job["threads"])
    rows = []
    for B in job["batch_sizes"]:
        def run_once(warmup: bool, B=B):
            request = engine_request(gen, B, 4 if warmup else job["steps"])
            t0 = time.perf_counter()
            loop = DecodeLoop(gen.backend, gen.tokenizer)
            loop.add(request)
            loop.step()
            first = time.perf_counter() - t0
            while loop.blocks:
                loop.step()
            return first, time.perf_counter() - t0

        rows.append(_progress(job, {"batch_size": B, "variants": [{"variant": f"onnxruntime {gen.backend.device}",
                                                                   **_timed(run_once, job["repeats"])}]}))
    return rows


def engine_request(gen, rows: int, steps: int):
    """The engine's timed job: `rows` rows of `steps` tokens each, sampled as the PyTorch rows sample.

    A records model's rows would end at <eos> after a few tokens while the rate counts `steps` per row
    (and the PyTorch rows never stop): <eos> is biased out, so every row does the same work as theirs."""
    never_end = {gen.tokenizer.eos_id: -100.0} if gen.manifest.records else None
    [request] = gen.jobs(num=rows, max_tokens=steps, temperature=TEMPERATURE, top_k=min(TOP_K, gen.manifest.dims.vocab_size),
                         seed=1234, allow_unk=True, block_rows=rows, logit_bias=never_end)
    return request


def graph_rows(job: dict) -> list[dict]:
    """generate.onnx: one ONNX Runtime call makes every token of every row (prefill, Loop, sampling).

    The call returns when all tokens are made, so its time to first token is the whole call."""
    from lstmgen.generator import Generator
    from lstmgen.graph_runner import GraphGenerator

    graph = GraphGenerator(Generator.load(job["artifact"], device="cpu", threads=job["threads"]), job["threads"])
    gen = graph.generator
    params = gen.sampling(temperature=TEMPERATURE, top_k=min(TOP_K, gen.manifest.dims.vocab_size))
    never_end = [gen.tokenizer.eos_id] if gen.manifest.records else []  # as engine_rows: every row writes all its tokens
    rows = []
    for B in job["batch_sizes"]:
        def run_once(warmup: bool, B=B):
            t0 = time.perf_counter()
            graph.run_ids([], B, 4 if warmup else job["steps"], 1234, params, never_end)
            total = time.perf_counter() - t0
            return total, total

        rows.append(_progress(job, {"batch_size": B, "variants": [{"variant": "generate.onnx (one call)",
                                                                   **_timed(run_once, job["repeats"])}]}))
    return rows


# -- PyTorch ------------------------------------------------------------------------------------------
def torch_rows(job: dict, tuned: bool) -> list[dict]:
    import torch

    torch.set_num_threads(job["threads"])
    device = torch.device("cuda" if job["device"] == "cuda" else "cpu")
    model, vocab = _torch_model(job, device)
    variants = _torch_variants(job, model, tuned)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sample = _torch_sampler(min(TOP_K, vocab))
    rows = []
    for B in job["batch_sizes"]:
        measured = []
        for name, (step, ctx, mkldnn, n_threads) in variants.items():
            def run_once(warmup: bool, B=B, step=step, ctx=ctx, mkldnn=mkldnn, n_threads=n_threads):
                n = 4 if warmup else job["steps"]
                flags = torch.backends.mkldnn.flags(enabled=mkldnn) if mkldnn is not None else contextlib.nullcontext()
                torch.set_num_threads(n_threads)
                with ctx(), flags:
                    torch.manual_seed(0)
                    state = model.zero_state(B, device)
                    tokens = torch.zeros(B, dtype=torch.long, device=device)
                    sync()
                    t0 = time.perf_counter()
                    logits, state = step(tokens, state)
                    tokens = sample(logits)
                    sync()
                    first = time.perf_counter() - t0
                    for _ in range(n - 1):
                        logits, state = step(tokens, state)
                        tokens = sample(logits)
                    sync()
                    return first, time.perf_counter() - t0

            measured.append({"variant": name, **_timed(run_once, job["repeats"])})
        rows.append(_progress(job, {"batch_size": B, "variants": measured}))
    return rows


def _torch_model(job: dict, device):
    """The PyTorch model of the job: the artifact's weights (job["onnx"]) or the spec's random ones; (model, vocab)."""
    import numpy as np
    import torch

    from lstmgen.bench.models import ModelSpec, random_weights
    from lstmgen.trainer.config import ModelConfig
    from lstmgen.trainer.model import LSTMLanguageModel

    spec = ModelSpec(**job["spec"])
    if job.get("onnx"):
        import onnx

        from lstmgen.graphs.step import read_step_weights

        sd_np, _ = read_step_weights(onnx.load(job["onnx"]))
    else:
        sd_np = random_weights(spec, job["seed"])
    model = LSTMLanguageModel(ModelConfig(spec.vocab, spec.embed, spec.hidden, spec.layers, dropout=0.0))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd_np.items()})  # a writable copy: onnx hands read-only views
    return model.eval().to(device), spec.vocab


def _torch_sampler(k: int):
    """The sampling step as users write it: top-k, softmax, multinomial."""
    import torch

    def sample(logits):
        v, i = torch.topk(logits / TEMPERATURE, k, dim=-1)
        return i.gather(1, torch.multinomial(torch.softmax(v, dim=-1), 1))[:, 0]

    return sample


def _torch_variants(job: dict, model, tuned: bool) -> dict:
    """name -> (step, grad context, oneDNN on/off/None, threads): the default, and with `tuned` what a careful
    user tries (the default variant stays a candidate: tuned is the best of them all)."""
    import torch

    def default_step(tokens, state):
        logits, state = model(tokens[:, None], state)
        return logits[:, -1], state

    threads = job["threads"]
    variants = {DEFAULT_VARIANT: (default_step, torch.no_grad, None, threads)}
    if not tuned:
        return variants
    fused = _fused_step(model)
    variants |= {"nn.LSTM, oneDNN off": (default_step, torch.inference_mode, False, threads),
                 "fused cell loop": (fused, torch.inference_mode, None, threads)}
    if threads > 1:  # small batches can run faster on one thread than on a pool
        variants["fused cell loop, 1 thread"] = (fused, torch.inference_mode, None, 1)
    if job.get("compile"):
        variants["fused cell loop, torch.compile"] = (torch.compile(_fused_step(model), dynamic=False),
                                                      torch.inference_mode, None, threads)
    return variants


def _fused_step(model):
    """What a careful user writes: one addmm per layer over [x, h], gates by hand, no nn.LSTM."""
    import torch

    layers = []
    for layer in range(model.cfg.num_layers):
        W = torch.cat([getattr(model.lstm, f"weight_ih_l{layer}"), getattr(model.lstm, f"weight_hh_l{layer}")], 1)
        b = getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")
        layers.append((W.t().contiguous().detach(), b.detach()))
    emb = model.embed.weight.detach()
    head_w, head_b = model.head.weight.t().contiguous().detach(), model.head.bias.detach()

    def step(tokens, state):
        h, c = state
        x = emb[tokens]
        hs, cs = [], []
        for layer, (W, b) in enumerate(layers):
            gates = torch.addmm(b, torch.cat([x, h[layer]], 1), W)
            i, f, g, o = gates.chunk(4, 1)
            c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        return torch.addmm(head_b, x, head_w), (torch.stack(hs), torch.stack(cs))

    return step


def main(argv: list[str]) -> int:
    # PyTorch's notes on TF32 and oneDNN settings the variants try would land in the bench's progress lines
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    job = json.loads(argv[0])
    with tempfile.TemporaryDirectory() as tmp:
        backend = job["backend"]
        if backend.startswith(("engine", "graph")) and not job.get("artifact"):
            from lstmgen.bench.models import ModelSpec, random_weights, write_artifact

            spec = ModelSpec(**job["spec"])
            job["artifact"] = str(write_artifact(Path(tmp) / "a", spec, random_weights(spec, job["seed"]),
                                                 int8=backend.endswith("int8"), generation_graph=backend.startswith("graph")))
        if backend.startswith("engine"):
            rows = engine_rows(job)
        elif backend.startswith("graph"):
            rows = graph_rows(job)
        else:
            rows = torch_rows(job, tuned=job["backend"] == "torch-tuned")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "peak_rss_mb": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
