"""The training loop: AdamW, warm-up + cosine schedule, clipping, validation, early stopping,
checkpoints that resume bit-for-bit, Ctrl-C/SIGTERM safety, progress, metrics and a loss curve.

The run folder holds: config.json (resolved config), last.pt and best.pt (checkpoints), metrics.jsonl
(one JSON object per log line), loss.png (learning curve), val.txt (the validation split as text, so
that export can score the artifact on exactly what training validated on) and, for records, records.u64
(hashes of every corpus record, for --novel).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lstmgen import faults, machine
from lstmgen.errors import LstmgenError
from lstmgen.manifest import record_hashes
from lstmgen.scoring import Score, stream_segments
from lstmgen.tokenizer import Tokenizer

from . import checkpoint
from .config import RunConfig
from .data import IGNORE, PreparedData, RecordBatches, StreamBatches, pad_records, prepare
from .distributed import Dist
from .model import LSTMLanguageModel

CALIBRATE_AT = 30  # step at which a --time-budget run fixes its schedule length from measured speed


@dataclass
class TrainResult:
    status: str  # "finished", "early-stopped", "budget", "interrupted"
    step: int
    best_val: float  # nats/token
    last_val: float
    run_dir: Path


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LstmgenError("--device cuda was asked for but no CUDA GPU is available (use --device cpu)")
        return torch.device("cuda")
    return torch.device("cpu")


def lr_at(step: int, cfg: RunConfig, planned: int) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(1, planned - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model: LSTMLanguageModel, data: PreparedData, streams: int, device: torch.device,
             rank: int = 0, world: int = 1) -> Score:
    """The validation figure (lstmgen.scoring's definition), in torch; rank r scores its share only."""
    model.eval()
    nats, tokens = 0.0, 0
    if data.records:
        seqs = sorted(data.val, key=len)[rank::world]
        for a in range(0, len(seqs), 256):
            x, y = pad_records(seqs[a: a + 256], data.tokenizer.eos_id)
            logits, _ = model(torch.from_numpy(x).to(device))
            yt = torch.from_numpy(y).to(device)
            nats += F.cross_entropy(logits.float().flatten(0, 1), yt.flatten(), ignore_index=IGNORE,
                                    reduction="sum").item()
            tokens += int((yt != IGNORE).sum())
        chars = sum(len(s) - 1 for s in data.val) if data.tokenizer.level == "char" else len(data.val_text)
    else:
        ids = data.val
        groups: dict[int, list[int]] = {}
        for start, length in stream_segments(len(ids), streams)[rank::world]:
            groups.setdefault(length, []).append(start)
        for length, starts in groups.items():
            x = np.stack([ids[s: s + length] for s in starts])
            y = np.stack([ids[s + 1: s + length + 1] for s in starts])
            state = None
            for a in range(0, length, 512):
                logits, state = model(torch.from_numpy(x[:, a: a + 512]).to(device), state)
                nats += F.cross_entropy(logits.float().flatten(0, 1), torch.from_numpy(y[:, a: a + 512]).flatten().to(device),
                                        reduction="sum").item()
            tokens += y.size
        chars = len(ids) - 1 if data.tokenizer.level == "char" else len(data.val_text)
    model.train()
    return Score(nats, tokens, chars)


def _param_groups(model: LSTMLanguageModel, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _StopFlag:
    """Ctrl-C / SIGTERM set a flag; the loop saves a resumable checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: the user insists
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def machine_description(device: torch.device) -> str:
    return machine.describe(torch.cuda.get_device_name(device) if device.type == "cuda" else None)


def train(cfg: RunConfig, run_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, interrupt_at_step: int | None = None) -> TrainResult:
    """Train (or resume) a run in run_dir. `interrupt_at_step` simulates Ctrl-C there (for tests).

    Under torchrun (WORLD_SIZE > 1) this runs data-parallel; see trainer/distributed.py.
    """
    run_dir = Path(run_dir)
    cfg.validate()
    t = cfg.train
    ranks = Dist()
    if ranks.enabled and t.batch_size % ranks.world:
        raise LstmgenError(f"--batch-size {t.batch_size} must be divisible by the {ranks.world} processes")
    if not ranks.is_main:
        progress, log = False, (lambda m: None)
    device = ranks.start(pick_device(t.device))
    completed = False
    try:
        result = _train(cfg, run_dir, resume, progress, log, interrupt_at_step, ranks, device)
        completed = True
        return result
    finally:
        ranks.stop(completed)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, progress: bool, log: Callable[[str], None],
           interrupt_at_step: int | None, ranks: Dist, device: torch.device) -> TrainResult:
    t = cfg.train
    main = ranks.is_main
    if t.threads:
        torch.set_num_threads(t.threads)
    ckpt = None
    if resume:
        ckpt = checkpoint.load(checkpoint.find(run_dir, "last"))
        saved = RunConfig.from_dict(ckpt["config"])
        diffs = cfg.same_experiment(saved)
        if diffs:
            raise LstmgenError(f"--resume with a different config than {run_dir} was trained with ({'; '.join(diffs)});"
                               " drop --resume to start over, or use the same settings")
        if ckpt.get("world_size", 1) != ranks.world:
            raise LstmgenError(f"{run_dir} was trained with {ckpt.get('world_size', 1)} process(es); resume it with"
                               f" the same number (now {ranks.world})")
    elif (run_dir / checkpoint.LAST).exists():
        raise LstmgenError(f"{run_dir} already holds a run; add --resume to continue it, or pick another --out")

    data = prepare(cfg.data)
    tok = data.tokenizer
    if ckpt is not None and Tokenizer.from_dict(ckpt["tokenizer"]).tokens != tok.tokens:
        raise LstmgenError(f"the corpus gives a different vocabulary than the run in {run_dir} was trained on;"
                           " resume with the same corpus")
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(t.seed)
    model = LSTMLanguageModel(cfg.model).to(device)
    if ranks.enabled:
        torch.manual_seed(t.seed * 1000 + ranks.rank)  # same weights everywhere, different dropout per rank
    net = torch.nn.parallel.DistributedDataParallel(model) if ranks.enabled else model
    opt = torch.optim.AdamW(_param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.99))
    batches = (RecordBatches(data.train, t.batch_size, t.seed, tok.eos_id, ranks.rank, ranks.world) if data.records
               else StreamBatches(data.train, t.batch_size, t.seq_len, ranks.rank, ranks.world))
    spe = batches.steps_per_epoch
    cap = t.epochs * spe if not t.max_steps else min(t.max_steps, t.epochs * spe)  # never plan past this
    planned = cap
    step, epoch, index, elapsed = 0, 0, 0, 0.0
    best_val, last_val, bad_evals, calibrated = math.inf, math.inf, 0, False
    carry = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"][ranks.rank] if ranks.enabled else ckpt["torch_rng"])
        step, epoch, index, elapsed = ckpt["step"], ckpt["epoch"], ckpt["index"], ckpt["elapsed"]
        best_val, last_val, bad_evals = ckpt["best_val"], ckpt["last_val"], ckpt["bad_evals"]
        calibrated = ckpt["calibrated"]
        saved_t = RunConfig.from_dict(ckpt["config"]).train
        same_budget = (saved_t.epochs, saved_t.max_steps, saved_t.time_budget) == (t.epochs, t.max_steps, t.time_budget)
        if same_budget:
            planned = ckpt["planned"]
        else:
            calibrated = False
            log(f"budget changed on resume: the schedule now plans {planned} steps")
        if ckpt.get("carry") is not None:
            share = t.batch_size // ranks.world
            carry = tuple(s[:, ranks.rank * share: (ranks.rank + 1) * share].to(device) for s in ckpt["carry"])
        log(f"resumed {run_dir} at step {step} (epoch {epoch + 1}, batch {index})")

    metrics = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint.remove_stale_temporaries(run_dir):
            log(f"removed temporary files of an interrupted checkpoint write in {run_dir}")
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        (run_dir / "val.txt").write_text(data.val_text, encoding="utf-8")
        if data.all_records is not None:
            record_hashes(data.all_records).astype("<u8").tofile(run_dir / "records.u64")
        metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    log(f"{'records' if data.records else 'running text'}, {tok.level} level, vocabulary {tok.vocab_size},"
        f" {n_params / 1e6:.2f}M parameters, {spe} steps/epoch, planning {planned} steps on {device}"
        + (f" x {ranks.world} processes" if ranks.enabled else ""))

    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    host = machine_description(device)  # once: every checkpoint records the same machine

    def state_dict() -> dict:
        rng = ranks.gather(torch.get_rng_state()) if ranks.enabled else torch.get_rng_state()
        full_carry = None
        if carry is not None:
            full_carry = tuple(torch.cat(ranks.gather(s.detach()), dim=1) for s in carry)
        return {"config": cfg.to_dict(), "tokenizer": tok.to_dict(), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "torch_rng": rng, "step": step, "epoch": epoch,
                "index": index, "elapsed": elapsed, "planned": planned, "calibrated": calibrated,
                "best_val": best_val, "last_val": last_val, "bad_evals": bad_evals, "carry": full_carry,
                "start_ids": data.start_ids, "records": data.records, "machine": host,
                "corpus": os.path.basename(cfg.data.corpus), "world_size": ranks.world}

    def save(name: str) -> None:
        sd = state_dict()  # every rank takes part in the gathers inside
        if main:
            checkpoint.save_atomically(sd, run_dir / name)

    def validate() -> None:
        nonlocal best_val, last_val, bad_evals
        part = evaluate(model, data, t.eval_streams, device, ranks.rank, ranks.world)
        nats, tokens = ranks.sum(part.nats, part.tokens)
        score = Score(nats, int(tokens), part.chars)
        last_val = score.nats_per_token
        improved = last_val < best_val - 1e-6
        if main:
            row = {"step": step, "epoch": epoch + 1, "val_nats_per_token": last_val, "val_perplexity": score.perplexity,
                   "val_bits_per_char": score.bits_per_char, "elapsed": round(elapsed, 2)}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        if improved:
            best_val, bad_evals = last_val, 0
            save(checkpoint.BEST)
        else:
            bad_evals += 1
        bpc = f", {score.bits_per_char:.3f} bits/char" if tok.level == "char" else ""
        log(f"step {step}: validation {last_val:.4f} nats/token, perplexity {score.perplexity:.2f}{bpc}"
            f"{' (best)' if improved else ''}")

    def print_samples() -> None:
        from .reference import torch_generate

        texts = torch_generate(model, tok, data.start_ids, data.records, num=t.sample_size, seed=step,
                               max_tokens=64 if data.records else 200, device=device)
        model.train()
        for s in texts:
            log(f"  sample: {s!r}")

    def fit_plan(margin: float) -> int:
        """Steps that fit the time budget at the speed so far (never past the epoch/step cap)."""
        fit = step + int((t.time_budget - elapsed) / (elapsed / step) * margin)
        new = ranks.broadcast_int(max(step + 1, min(cap, fit)))
        if bar is not None:
            bar.total = new
            bar.refresh()
        return new

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=planned, initial=step, unit="step", dynamic_ncols=True, leave=True)
    status = "finished"
    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    last_clock = time.perf_counter()
    with _StopFlag() as stop:
        while True:
            if step >= planned:
                status = "finished"
                break
            if t.time_budget and elapsed >= t.time_budget:
                status = "budget"
                break
            if index >= spe:
                epoch, index, carry = epoch + 1, 0, None
                if epoch >= t.epochs:
                    status = "finished"
                    break
            if data.records or index == 0:
                carry = None
            x, y = batches.batch(epoch, index)
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
            yt = torch.from_numpy(np.ascontiguousarray(y)).to(device)
            n_tok = int((yt != IGNORE).sum())
            # Sum over this rank's tokens / tokens of the whole global batch: DDP's gradient average
            # then equals the single-process mean over the global batch exactly.
            global_tok = ranks.sum(n_tok)[0]
            lr = lr_at(step, cfg, planned)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits, new_state = net(xt, carry)
                loss_sum = F.cross_entropy(logits.float().flatten(0, 1), yt.flatten(), ignore_index=IGNORE,
                                           reduction="sum")
                loss = loss_sum * (ranks.world / max(1.0, global_tok))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip)
            opt.step()
            if not data.records:
                carry = tuple(s.detach() for s in new_state)
            step += 1
            index += 1
            faults.pause("train-step")  # crash tests kill the process at an exact step here
            now = time.perf_counter()
            elapsed += now - last_clock
            last_clock = now
            window_tokens += global_tok
            shown_loss = loss.item() / ranks.world
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    rate = window_tokens / max(1e-9, now - window_start)
                    bar.set_postfix(loss=f"{shown_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}")
            if step % 50 == 0:
                rate = window_tokens / max(1e-9, now - window_start)
                if main:
                    metrics.write(json.dumps({"step": step, "epoch": epoch + 1, "train_loss": shown_loss, "lr": lr,
                                              "tokens_per_s": round(rate, 1), "elapsed": round(elapsed, 2)}) + "\n")
                window_tokens, window_start = 0, now
            if t.time_budget and not calibrated and step >= CALIBRATE_AT:
                planned = fit_plan(0.92)  # keep ~8% for validation
                calibrated = True
            if t.sample_every and step % t.sample_every == 0 and main:
                print_samples()
            if step % t.eval_every == 0 or step >= planned:
                validate()
                if t.time_budget and calibrated and step < planned:
                    # Re-fit the plan to the speed seen so far (the machine may have been busier or
                    # quieter than at calibration); validation time is inside `elapsed` from here.
                    planned = fit_plan(0.95)
                save(checkpoint.LAST)
                if not t.time_budget:
                    last_clock = time.perf_counter()
                if t.patience and bad_evals >= t.patience:
                    status = "early-stopped"
                    break
            if interrupt_at_step is not None and step == interrupt_at_step:
                stop.signal = signal.SIGINT
            # Every rank must stop at the same step; one small all-reduce per step agrees on it.
            halt, over_budget = ranks.any(stop.signal is not None, bool(t.time_budget and elapsed >= t.time_budget))
            if halt:
                status = "interrupted"
                break
            if over_budget:
                status = "budget"
                break
    if bar is not None:
        bar.close()
    if status == "budget" and step % t.eval_every != 0:
        validate()
    save(checkpoint.LAST)
    if ranks.broadcast_int(int(main and not (run_dir / checkpoint.BEST).exists())):
        save(checkpoint.BEST)
    _dump_rank_weights(model, ranks)
    if main:
        metrics.close()
        plot_curve(run_dir)
    if status == "interrupted":
        log(f"interrupted at step {step}; a resumable checkpoint is in {run_dir / checkpoint.LAST}"
            f" (continue with the same command and --resume)")
    else:
        log(f"{status} at step {step}: best validation {best_val:.4f} nats/token; checkpoints in {run_dir}")
    return TrainResult(status, step, best_val, last_val, run_dir)


def _dump_rank_weights(model: LSTMLanguageModel, ranks: Dist) -> None:
    """Tests set LSTMGEN_DUMP_RANK_WEIGHTS=DIR to compare the weights every rank ends with."""
    folder = os.environ.get("LSTMGEN_DUMP_RANK_WEIGHTS")
    if folder:
        torch.save(model.state_dict(), Path(folder) / f"rank{ranks.rank}.pt")


def plot_curve(run_dir: Path) -> None:
    """loss.png from metrics.jsonl: training loss and validation loss against steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    train_pts, val_pts = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train_loss" in row:
            train_pts.append((row["step"], row["train_loss"]))
        if "val_nats_per_token" in row:
            val_pts.append((row["step"], row["val_nats_per_token"]))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train_pts:
        ax.plot(*zip(*train_pts), label="train (batch)", alpha=0.6)
    if val_pts:
        ax.plot(*zip(*val_pts), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = run_dir / ".loss.png.tmp"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, run_dir / "loss.png")
