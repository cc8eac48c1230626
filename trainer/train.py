"""The training loop, as one object (`Trainer`) whose parts read top to bottom and can be tested one
by one: setting up (data, model, optimizer, resume), the time-budget plan, one optimizer step,
validation, checkpoints, and the loop that ties them together.

AdamW with a warm-up + cosine schedule, gradient clipping, early stopping, checkpoints that resume
bit-for-bit, Ctrl-C/SIGTERM safety, progress, metrics and a loss curve.

The run folder holds: config.json (resolved config), last.pt and best.pt (checkpoints, schema in
checkpoint.py), metrics.jsonl (one JSON object per log line), loss.png (learning curve), val.txt (the
validation split as text, so that export can score the artifact on exactly what training validated
on) and, for records, records.u64 (hashes of every corpus record, for --novel).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lstmgen import faults
from lstmgen.errors import LstmgenError
from lstmgen.scoring import Score, ScoredText, score_text
from lstmgen.tokenizer import Tokenizer

from . import checkpoint, machine, planner
from .checkpoint import Checkpoint, Progress
from .config import RunConfig
from .data import IGNORE, PreparedData, RecordBatches, StreamBatches, training_tokens
from .distributed import Dist
from .finetune import StartingPoint, check_shape, fit_to_data
from .model import LSTMLanguageModel
from .planner import Plan
from .prepare import load_prepared, prepare_on_disk
from .probe import probe_speed

CALIBRATE_AT = 30  # step at which a --time-budget run fixes its schedule length from measured speed
REFIT_EVERY = 10  # steps between re-fits of a time-budget plan after that
NO_LIMIT = 2**62  # a time-budget run without --epochs or --max-steps: the budget alone ends it
FEW_STEPS = 200  # a plan shorter than this learns little; the user is told
LOG_POINTS = 100  # the training loss is logged about this often over a run (at most every 50 steps)


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
    """The validation figure, by lstmgen.scoring's one implementation with a torch reader; rank r scores
    its share of the segments or records only (the caller sums the shares)."""
    model.eval()
    try:
        return score_text(torch_reader(model, device), validation_text(data), streams, share=(rank, world))
    finally:
        model.train()


def validation_text(data: PreparedData) -> ScoredText:
    """The validation split as lstmgen.scoring reads it (already encoded by the run's tokenizer)."""
    word = data.tokenizer.level == "word"
    if data.records:
        chars = len(data.val_text) if word else sum(len(s) - 1 for s in data.val)
        return ScoredText(list(data.val), True, chars)
    return ScoredText([data.val], False, len(data.val_text) if word else len(data.val) - 1)


def torch_reader(model: LSTMLanguageModel, device: torch.device):
    """lstmgen.scoring's Reader over the torch model: surprisal of the targets in float64, and the state after."""
    def read(inputs: np.ndarray, targets: np.ndarray, state):
        logits, state = model(torch.from_numpy(np.ascontiguousarray(inputs)).to(device), state)
        nats = F.cross_entropy(logits.float().flatten(0, 1), torch.from_numpy(np.ascontiguousarray(targets)).flatten().to(device),
                               reduction="none")
        return nats.double().view(targets.shape).cpu().numpy(), state
    return read


def param_groups(model: LSTMLanguageModel, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases and embeddings."""
    decay, no_decay = [], []
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class StopFlag:
    """Ctrl-C / SIGTERM set a flag; the loop saves a resumable checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
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
          log: Callable[[str], None] = print, interrupt_at_step: int | None = None,
          clock: Callable[[], float] = time.perf_counter, start: StartingPoint | None = None,
          choose: frozenset[str] = frozenset()) -> TrainResult:
    """Train (or resume) a run in run_dir. `interrupt_at_step` simulates Ctrl-C there (for tests);
    `clock` measures training time (tests pass a fake one to drive the time budget by steps); `start`
    is a fine-tuning starting point (finetune.py); `choose`: what the time-budget planner may set
    (PLANNED; the CLI passes what the user did not give), nothing by default.

    Under torchrun (WORLD_SIZE > 1) this runs data-parallel; see trainer/distributed.py.
    """
    cfg.validate()
    ranks = Dist()
    if ranks.enabled and cfg.train.batch_size % ranks.world:
        raise LstmgenError(f"--batch-size {cfg.train.batch_size} must be divisible by the {ranks.world} processes")
    if not ranks.is_main:
        progress, log = False, (lambda m: None)
    device = ranks.start(pick_device(cfg.train.device))
    completed = False
    try:
        trainer = Trainer(cfg, Path(run_dir), resume=resume, ranks=ranks, device=device, log=log, clock=clock,
                          start=start, progress=progress, choose=choose)
        result = trainer.run(progress=progress, interrupt_at_step=interrupt_at_step)
        completed = True
        return result
    finally:
        ranks.stop(completed)


class Trainer:
    """One training run. Build it (data, model, optimizer, restored state), then `run()` it.

    Sections, in the order a step meets them: setup, the plan (how many steps, fitted to a time
    budget), one step, validation, checkpoints, the loop. Every rank of a data-parallel run builds
    its own Trainer; only rank 0 (`self.main`) writes files.
    """

    # ------------------------------------------------------------------------------------------------
    # Setup: refuse what cannot work, read the data, build the model and optimizer, restore a checkpoint
    # ------------------------------------------------------------------------------------------------

    def __init__(self, cfg: RunConfig, run_dir: Path, *, resume: bool = False, ranks: Dist | None = None,
                 device: torch.device | None = None, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.perf_counter, start: StartingPoint | None = None,
                 progress: bool = False, choose: frozenset[str] = frozenset()) -> None:
        self.cfg, self.t, self.run_dir = cfg, cfg.train, run_dir
        self.ranks = ranks or Dist()
        self.main = self.ranks.is_main
        self.device = device or pick_device(cfg.train.device)
        self.log, self.clock, self.start = log, clock, start
        self.bar = None
        self.validated_at = -1  # the step of the last validation
        self.thread_trial: ThreadTrial | None = None  # the planner chose the thread count: re-check it now and then
        self.threads_probed: tuple[int, float, float] | None = None
        if self.t.threads:
            torch.set_num_threads(self.t.threads)
        if start is not None:
            check_shape(cfg, start)
        if not resume:
            self.refuse_to_overwrite()
        resumed = self.checkpoint_to_resume() if resume else None
        self.init_from = start.provenance if start else (resumed.init_from if resumed else None)
        self.run_id = resumed.run_id if resumed is not None and resumed.run_id else uuid.uuid4().hex
        self.data = self.prepared_data(self.base_tokenizer(resumed), progress)
        self.tok = self.data.tokenizer
        if resumed is not None and Tokenizer.from_dict(resumed.tokenizer).tokens != self.tok.tokens:
            raise LstmgenError(f"the corpus gives a different vocabulary than the run in {run_dir} was trained on;"
                               " resume with the same corpus")
        cfg.model.vocab_size = self.tok.vocab_size
        self.pace = Pace()
        self.plan = self.make_plan(choose) if choose and cfg.train.time_budget and resumed is None else None
        if start is not None and resumed is None and {"lr", "warmup_steps"} & choose:
            self.fit_finetuning(choose)
        self.model, self.net, self.opt = self.build_model()
        self.batches = (RecordBatches(self.data.train, self.t.batch_size, self.t.seed, self.tok.eos_id, self.ranks.rank,
                                      self.ranks.world) if self.data.records
                        else StreamBatches(self.data.train, self.t.batch_size, self.t.seq_len, self.ranks.rank,
                                           self.ranks.world))
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.progress = Progress(planned=self.step_cap())
        if self.plan is not None:  # the probe's seconds are part of the budget
            self.progress.elapsed = self.pace.probe_s
        self.carry: tuple[torch.Tensor, torch.Tensor] | None = None  # running text: state between windows
        if resumed is not None:
            self.restore(resumed)
        self.use_amp = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.host = machine_description(self.device)  # once: every checkpoint records the same machine

    def prepared_data(self, base: Tokenizer | None, progress: bool) -> PreparedData:
        """The corpus prepared into RUN/data (prepare.py), by rank 0; the other ranks wait, then map it."""
        folder = self.run_dir / "data"
        sample = self.cfg.data.val_sample_chars
        data = None
        if self.main:
            data = prepare_on_disk(self.cfg.data, folder, base_tokenizer=base, progress=progress, log=self.log,
                                   val_sample_chars=sample)
        self.ranks.barrier()
        return data if data is not None else load_prepared(folder, sample)

    def refuse_to_overwrite(self) -> None:
        if (self.run_dir / checkpoint.LAST).exists():
            raise LstmgenError(f"{self.run_dir} already holds a run; add --resume to continue it, or pick another --out")

    def checkpoint_to_resume(self) -> Checkpoint:
        """last.pt, after checking that this config can continue it (settings that fix the model's
        shape or its vocabulary cannot change; the others can, and the user is told)."""
        ckpt = checkpoint.load(checkpoint.find(self.run_dir, "last"))
        saved = RunConfig.from_dict(ckpt.config)
        fixed = self.cfg.fixed_differences(saved)
        if fixed:
            raise LstmgenError(f"{self.run_dir} was trained with a different config in what --resume cannot change"
                               f" ({'; '.join(fixed)}); drop --resume to start over, or keep those settings")
        changed = self.cfg.differences(saved)
        if changed:
            self.log(f"resuming with changed settings: {'; '.join(changed)}")
        return ckpt

    def base_tokenizer(self, resumed: Checkpoint | None) -> Tokenizer | None:
        """A fine-tuned run's vocabulary extends its starting model's (a resumed one: the checkpoint's)."""
        if self.start is not None:
            return self.start.tokenizer
        if resumed is not None and resumed.init_from is not None:
            return Tokenizer.from_dict(resumed.tokenizer)
        return None

    def build_model(self) -> tuple[LSTMLanguageModel, torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(self.t.seed)
        model = LSTMLanguageModel(self.cfg.model).to(self.device)
        if self.start is not None:
            self.start.load_into(model, self.tok, self.data.token_counts)
        if self.ranks.enabled:
            torch.manual_seed(self.t.seed * 1000 + self.ranks.rank)  # same weights everywhere, different dropout per rank
        net = torch.nn.parallel.DistributedDataParallel(model) if self.ranks.enabled else model
        opt = torch.optim.AdamW(param_groups(model, self.t.weight_decay), lr=self.t.lr, betas=(0.9, 0.99))
        return model, net, opt

    def restore(self, ckpt: Checkpoint) -> None:
        """Weights, optimizer, random state, counters and carried state from a checkpoint."""
        ranks = self.ranks
        self.model.load_state_dict(ckpt.model)
        self.opt.load_state_dict(ckpt.optimizer)
        for g in self.opt.param_groups:  # the checkpoint's hyper-parameters give way to this config's
            g["weight_decay"] = self.t.weight_decay if g["weight_decay"] else 0.0
        self.torch_rng_from(ckpt)
        saved = ckpt.progress
        self.progress = Progress(**vars(saved))
        saved_t = RunConfig.from_dict(ckpt.config).train
        if (saved_t.epochs, saved_t.max_steps, saved_t.time_budget) != (self.t.epochs, self.t.max_steps, self.t.time_budget):
            self.progress.planned, self.progress.calibrated = self.step_cap(), False
            self.log("budget changed on resume: the schedule is planned again"
                     + (f" ({self.progress.planned} steps)" if not self.t.time_budget else ""))
        if ckpt.carry is not None and ckpt.carry[0].shape[1] == self.t.batch_size:
            share = self.t.batch_size // ranks.world
            self.carry = tuple(s[:, ranks.rank * share: (ranks.rank + 1) * share].to(self.device) for s in ckpt.carry)
        if ckpt.world_size != ranks.world:
            self.log(f"resuming a {ckpt.world_size}-process run with {ranks.world}: it continues from step"
                     f" {saved.step} and the same data position, but is no longer bit-identical to an uninterrupted run")
        self.log(f"resumed {self.run_dir} at step {saved.step} (epoch {saved.epoch + 1}, batch {saved.index})")

    def torch_rng_from(self, ckpt: Checkpoint) -> None:
        """Each rank takes its own saved random state; a rank the checkpoint has none for (the process
        count changed) starts from a seed of its rank and step."""
        states = ckpt.torch_rng if isinstance(ckpt.torch_rng, list) else [ckpt.torch_rng]
        rank = self.ranks.rank
        if rank < len(states):
            torch.set_rng_state(states[rank])
        else:
            torch.manual_seed(self.t.seed * 1000 + rank + 7919 * ckpt.progress.step)

    # ------------------------------------------------------------------------------------------------
    # The plan: the shape and batch a time budget buys (planner.py), and how many steps the
    # learning-rate schedule spans, re-fitted to the measured speed as the run goes
    # ------------------------------------------------------------------------------------------------

    def make_plan(self, choose: frozenset[str]) -> Plan:
        """Probe the speed of each shape the planner may pick, choose, and set the config to the choice."""
        m, t, d = self.cfg.model, self.t, self.data
        # The reference curves are char-level: a word model keeps its level's shape.
        plan_shape = "shape" in choose and self.tok.level == "char"
        shapes = planner.SHAPES if plan_shape else [(m.embed_dim, m.hidden_size, m.num_layers)]
        fixed = {k: getattr(t, k) for k in ("batch_size", "seq_len", "eval_every") if k not in choose}
        if not plan_shape:
            fixed["hidden_size"] = m.hidden_size
        train_tokens = training_tokens(d.train)
        mean_record = train_tokens / max(1, len(d.train)) if d.records else 0
        window = max(2, round(mean_record)) if d.records else fixed.get("seq_len", planner.SEQ_LEN)
        speeds = self.probe_shapes(shapes, fixed.get("batch_size", planner.PROBE_BATCH), window, "threads" in choose)
        plan = planner.choose(t.time_budget, speeds, corpus_tokens=train_tokens, records=d.records,
                              mean_record_tokens=mean_record, fixed=fixed,
                              val_tokens=sum(map(len, d.val)) if d.records else len(d.val), overhead_s=self.pace.probe_s)
        m.embed_dim, m.hidden_size, m.num_layers = plan.shape
        t.batch_size, t.seq_len, t.eval_every = plan.batch_size, plan.seq_len, plan.eval_every
        if m.tie_weights and m.embed_dim != m.hidden_size:
            m.tie_weights = False
        self.cfg.validate()
        return plan

    def probe_shapes(self, shapes: list[tuple[int, int, int]], batch: int, window: int,
                     threads: bool) -> dict[tuple[int, int, int], float]:
        """Training tokens/s of each shape (summed over ranks), first picking the thread count if asked;
        the seconds it took go into the budget (the same figure on every rank, so every rank plans alike)."""
        started = self.clock()
        seconds = min(0.6, 0.004 * self.t.time_budget)  # about 1% of the budget in all

        def speed(shape: tuple[int, int, int]) -> float:
            return self.ranks.sum(probe_speed(shape, self.tok.vocab_size, batch, window, self.device,
                                              dropout=self.cfg.model.dropout, seconds=seconds))[0]

        if threads:
            self.pick_threads(lambda: speed(shapes[0]))
            self.thread_trial = ThreadTrial(self.ranks) if self.threads_probed else None
        speeds = {shape: speed(shape) for shape in shapes}
        for small, big in zip(shapes, shapes[1:]):
            if speeds[small] < speeds[big]:  # another process took the machine during this probe: again
                speeds[small] = max(speeds[small], speed(small))
        self.pace.probe_s = self.ranks.sum(self.clock() - started)[0] / self.ranks.world
        return speeds

    def fit_finetuning(self, choose: frozenset[str]) -> None:
        """Fine-tuning's learning rate and warm-up, fitted to the new corpus's size (finetune.fit_to_data)."""
        d = self.data
        tokens = training_tokens(d.train)
        windows = len(d.train) if d.records else tokens // max(1, self.t.seq_len)
        lr, warmup = fit_to_data(self.start, tokens, max(1, windows // self.t.batch_size))
        if "lr" in choose:
            self.t.lr = lr
        if "warmup_steps" in choose:
            self.t.warmup_steps = warmup
        self.say(f"fine-tuning on {tokens:,} tokens: learning rate {self.t.lr:.2g}, warm-up {self.t.warmup_steps} steps"
                 " (--lr and --warmup-steps set them)")

    def pick_threads(self, speed: Callable[[], float]) -> None:
        """All cores, or one: on a machine where another process keeps a core busy, PyTorch's threads wait
        on each other and one thread runs twice as fast as two (measured on 2 cores); so measure both."""
        if self.device.type != "cpu" or torch.get_num_threads() < 2:
            return
        default = torch.get_num_threads()
        every = speed()
        torch.set_num_threads(1)
        one = speed()
        self.threads_probed = (default, every, one)
        if one > every:
            self.t.threads = 1
        else:
            torch.set_num_threads(default)

    def show_planned(self) -> None:
        """The planner's choice and the speeds it measured, then its warnings."""
        plan = self.plan
        probed = ", ".join(f"hidden {c.shape[1]}: {c.tokens_per_s:,.0f} tokens/s, predicts {c.predicted:.2f}"
                           for c in sorted(plan.candidates, key=lambda c: c.shape[1]))
        self.say(f"planned for the {self.t.time_budget:g} s budget: {plan.describe()} (probed in"
                 f" {self.pace.probe_s:.1f} s: {probed})")
        if self.threads_probed:
            n, every, one = self.threads_probed
            self.say(f"threads: {1 if self.t.threads == 1 else n} ({n} threads ran {every:,.0f} tokens/s, one"
                     f" {one:,.0f}; --threads sets it)")
        for w in plan.warnings:
            self.say(w)
        self.write_metrics({"plan": {**{k: v for k, v in vars(plan).items() if k not in ("candidates", "warnings")},
                                     "probe_s": round(self.pace.probe_s, 2),
                                     "candidates": [vars(c) for c in plan.candidates]}})

    def step_cap(self) -> int:
        """Never plan past this: --max-steps, or --epochs passes over the data (none under a bare time budget)."""
        epochs = self.t.epoch_limit()
        cap = epochs * self.steps_per_epoch if epochs else NO_LIMIT
        return min(self.t.max_steps, cap) if self.t.max_steps else cap

    def fit_plan(self) -> int:
        """Steps that end the run on its time budget at the pace measured so far (never past the step
        cap). What is left of the budget pays for the steps, a validation and checkpoint every
        eval_every steps, and the last one."""
        p, pace = self.progress, self.pace
        left = self.t.time_budget - p.elapsed - pace.stretch_s
        per_step = pace.step_s + pace.stretch_s / self.t.eval_every
        fit = p.step + max(1, int(left / max(1e-9, per_step))) if left > 0 else p.step + 1
        return self.ranks.broadcast_int(min(self.step_cap(), fit))

    def calibrate(self) -> None:
        """Under a time budget, fit the plan to the speed measured over the first CALIBRATE_AT steps."""
        p = self.progress
        p.planned, p.calibrated = self.fit_plan(), True
        self.show_plan()
        self.say(f"step {p.step}: {1 / max(1e-9, self.pace.step_s):.1f} steps/s, planning {p.planned} steps to fit the"
                 f" {self.t.time_budget:g} s budget")
        if p.planned < min(FEW_STEPS, self.step_cap()):
            self.say(f"warning: {p.planned} steps is too few to learn much; give a longer --time-budget or a smaller"
                     " model (--hidden-size, --batch-size)")

    def refit(self) -> None:
        """Re-fit the plan to the pace seen lately (the machine may be busier or quieter than before)."""
        self.progress.planned = self.fit_plan()
        self.show_plan()

    def show_plan(self) -> None:
        if self.bar is not None:
            self.bar.total = self.progress.planned
            self.bar.refresh()

    def describe_plan(self) -> str:
        p = self.progress
        if self.t.time_budget and not p.calibrated:
            limit = f", at most {p.planned}" if p.planned < NO_LIMIT else ""
            return f"a {self.t.time_budget:g} s time budget (steps fitted at step {CALIBRATE_AT}{limit})"
        return f"{p.planned} steps"

    def log_every(self) -> int:
        """Training-loss log interval: about LOG_POINTS points over the plan, so short runs get a curve."""
        if self.progress.planned >= NO_LIMIT:  # a time budget before calibration: the plan is not known yet
            return 1
        return max(1, min(50, self.progress.planned // LOG_POINTS))

    # ------------------------------------------------------------------------------------------------
    # One step: a batch forward and backward, clipped, one AdamW update
    # ------------------------------------------------------------------------------------------------

    def train_step(self) -> tuple[float, int]:
        """One optimizer step on the next batch. Returns (mean loss over the global batch, its tokens)."""
        p, ranks = self.progress, self.ranks
        if self.data.records or p.index == 0:
            self.carry = None
        x, y = self.batches.batch(p.epoch, p.index)
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        yt = torch.from_numpy(np.ascontiguousarray(y)).to(self.device)
        # Sum over this rank's tokens / tokens of the whole global batch: DDP's gradient average
        # then equals the single-process mean over the global batch exactly.
        global_tokens = ranks.sum(int((yt != IGNORE).sum()))[0]
        self.lr = lr_at(p.step, self.cfg, p.planned)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            logits, new_state = self.net(xt, self.carry)
            loss_sum = F.cross_entropy(logits.float().flatten(0, 1), yt.flatten(), ignore_index=IGNORE, reduction="sum")
            loss = loss_sum * (ranks.world / max(1.0, global_tokens))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.clip)
        self.opt.step()
        if not self.data.records:
            self.carry = tuple(s.detach() for s in new_state)
        p.step += 1
        p.index += 1
        return loss.item() / ranks.world, int(global_tokens)

    def next_epoch_if_done(self) -> bool:
        """At the end of an epoch, move to the next one. False when the epoch limit is reached."""
        p = self.progress
        if p.index < self.steps_per_epoch:
            return True
        p.epoch, p.index, self.carry = p.epoch + 1, 0, None
        return not (self.t.epoch_limit() and p.epoch >= self.t.epoch_limit())

    # ------------------------------------------------------------------------------------------------
    # Validation: the score on the held-out split, best-so-far bookkeeping, samples
    # ------------------------------------------------------------------------------------------------

    def validate(self) -> Score:
        """Score the validation split (summed over ranks), log it, and save best.pt on improvement."""
        p, ranks = self.progress, self.ranks
        self.validated_at = p.step
        part = evaluate(self.model, self.data, self.t.eval_segments, self.device, ranks.rank, ranks.world)
        nats, tokens = ranks.sum(part.nats, part.tokens)
        score = Score(nats, int(tokens), part.chars)
        p.last_val = score.nats_per_token
        improved = p.last_val < p.best_val - 1e-6
        self.write_metrics({"step": p.step, "epoch": p.epoch + 1, "val_nats_per_token": p.last_val,
                            "val_perplexity": score.perplexity, "val_bits_per_char": score.bits_per_char,
                            "elapsed": round(p.elapsed, 2)})
        if improved:
            p.best_val, p.best_step, p.bad_evals = p.last_val, p.step, 0
            self.save(checkpoint.BEST)
        else:
            p.bad_evals += 1
        bpc = f", {score.bits_per_char:.3f} bits/char" if self.tok.level == "char" else ""
        of = f" of {self.t.time_budget:g}" if self.t.time_budget else ""
        self.say(f"step {p.step}: validation {p.last_val:.4f} nats/token, perplexity {score.perplexity:.2f}{bpc}"
                 f"{' (best)' if improved else ''} [{p.elapsed:.0f}{of} s, {self.pace_text()}]")
        return score

    def pace_text(self) -> str:
        planned = f"{self.progress.planned:,}" if self.progress.planned < NO_LIMIT else "?"
        speed = f", {1 / self.pace.step_s:.1f} steps/s" if self.pace.step_s > 0 else ""
        return f"step {self.progress.step:,}/{planned}{speed}"

    def samples(self) -> list[str]:
        from .reference import torch_generate

        texts = torch_generate(self.model, self.tok, self.data.start_ids, self.data.records, num=self.t.sample_size,
                               seed=self.progress.step, max_tokens=64 if self.data.records else 200, device=self.device)
        self.model.train()
        return texts

    # ------------------------------------------------------------------------------------------------
    # Checkpoints: the whole state in the typed schema of checkpoint.py, written by rank 0
    # ------------------------------------------------------------------------------------------------

    def to_checkpoint(self) -> Checkpoint:
        """The resumable state. Every rank must call it: it gathers random states and carried state."""
        ranks = self.ranks
        rng = ranks.gather(torch.get_rng_state()) if ranks.enabled else torch.get_rng_state()
        carry = None
        if self.carry is not None:
            carry = tuple(torch.cat(ranks.gather(s.detach()), dim=1) for s in self.carry)
        return Checkpoint(config=self.cfg.to_dict(), tokenizer=self.tok.to_dict(), model=self.model.state_dict(),
                          optimizer=self.opt.state_dict(), torch_rng=rng, progress=Progress(**vars(self.progress)),
                          start_ids=self.data.start_ids, records=self.data.records, carry=carry, machine=self.host,
                          corpus=os.path.basename(self.cfg.data.corpus), world_size=ranks.world,
                          init_from=self.init_from, run_id=self.run_id)

    def save(self, name: str) -> None:
        ckpt = self.to_checkpoint()  # every rank takes part in the gathers inside
        if self.main:
            checkpoint.save_atomically(ckpt, self.run_dir / name)

    # ------------------------------------------------------------------------------------------------
    # The run folder's other files, and what the user sees
    # ------------------------------------------------------------------------------------------------

    def open_run_folder(self) -> None:
        self.metrics = None
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint.remove_stale_temporaries(self.run_dir):
            self.log(f"removed temporary files of an interrupted checkpoint write in {self.run_dir}")
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1) + "\n")
        if self.data.val_path is not None:
            shutil.copyfile(self.data.val_path, self.run_dir / "val.txt")
        else:
            (self.run_dir / "val.txt").write_text(self.data.val_text, encoding="utf-8")
        if self.data.record_hashes is not None:
            self.data.record_hashes.astype("<u8").tofile(self.run_dir / "records.u64")
        self.metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def write_metrics(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()

    def say(self, message: str) -> None:
        """Log a line without tearing the progress bar."""
        if self.bar is None:
            self.log(message)
            return
        with self.bar.external_write_mode():
            self.log(message)

    def announce(self) -> None:
        d, tok = self.data, self.tok
        n_params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        self.say(f"{'records' if d.records else 'running text'}, {tok.level} level, vocabulary {tok.vocab_size},"
                 f" {n_params / 1e6:.2f}M parameters, {self.steps_per_epoch} steps/epoch, planning"
                 f" {self.describe_plan()} on {self.device}" + (f" x {self.ranks.world} processes" if self.ranks.enabled else ""))
        if self.plan is not None:
            self.show_planned()
        if self.start is not None:
            kept = self.start.tokenizer.vocab_size
            self.say(f"fine-tuning from {self.start.description}: {kept} tokens kept, {tok.vocab_size - kept} new")
        if d.records and len(d.train) < self.t.batch_size:
            self.say(f"warning: the corpus has {len(d.train)} training records, fewer than one batch"
                     f" (--batch-size {self.t.batch_size}); every step sees all of them")

    def show_step(self, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{self.lr:.2e}", refresh=False)

    # ------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------

    def run(self, *, progress: bool = True, interrupt_at_step: int | None = None) -> TrainResult:
        """Train until the plan, the epochs, the time budget, early stopping or a signal ends it."""
        self.open_run_folder()
        p = self.progress
        if progress and sys.stderr.isatty():  # a bar on a terminal; in a log, the validation lines say how it goes
            from tqdm.auto import tqdm

            total = None if self.t.time_budget and not p.calibrated else p.planned
            self.bar = tqdm(total=total, initial=p.step, unit="step", dynamic_ncols=True, leave=True)
        self.announce()
        self.model.train()
        with StopFlag() as stop:
            status = self.loop(stop, interrupt_at_step)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.finish(status)
        return TrainResult(status, p.step, p.best_val, p.last_val, self.run_dir)

    def loop(self, stop: StopFlag, interrupt_at_step: int | None) -> str:
        """Steps until something ends the run; returns why (TrainResult.status)."""
        p, t = self.progress, self.t
        window = LossWindow(self.clock())
        last_clock = window.start
        while True:
            if p.step >= p.planned:
                return "finished"
            if t.time_budget and p.elapsed >= t.time_budget:
                return "budget"
            if not self.next_epoch_if_done():
                return "finished"
            loss, tokens = self.train_step()
            faults.pause("train-step")  # crash tests kill the process at an exact step here
            now = self.clock()
            p.elapsed += now - last_clock
            self.pace.step(now - last_clock)
            if self.thread_trial is not None:
                self.thread_trial.step(p.step, now - last_clock)
            last_clock = now
            window.add(loss, tokens)
            self.show_step(loss, window.tokens_per_s(now))
            if p.step % self.log_every() == 0:
                self.write_metrics({"step": p.step, "epoch": p.epoch + 1, **window.take(now), "lr": self.lr,
                                    "elapsed": round(p.elapsed, 2)})
            if t.time_budget and not p.calibrated and p.step >= CALIBRATE_AT:
                self.calibrate()
            elif t.time_budget and p.calibrated and self.pace.steady() and p.step % REFIT_EVERY == 0:
                self.refit()
            validating = p.step % t.eval_every == 0 or p.step >= p.planned
            if t.sample_every and p.step % t.sample_every == 0 and self.main:
                self.print_samples(loss, validating)
            if validating:
                self.checkpoint_stretch()
                last_clock = self.clock()
                self.pace.stretch_s = last_clock - now
                if t.time_budget:  # under a budget validation is spent time too; without one it is not training
                    p.elapsed += last_clock - now
                    if p.calibrated and self.pace.steady() and p.step < p.planned:
                        self.refit()
                if t.patience and p.bad_evals >= t.patience:
                    return "early-stopped"
            if interrupt_at_step is not None and p.step == interrupt_at_step:
                stop.signal = signal.SIGINT
            # Every rank must stop at the same step; one small all-reduce per step agrees on it.
            halt, over_budget = self.ranks.any(stop.signal is not None, bool(t.time_budget and p.elapsed >= t.time_budget))
            if halt:
                return "interrupted"
            if over_budget:
                return "budget"

    def print_samples(self, loss: float, validating: bool) -> None:
        """Samples come before the `step N:` line they belong to (the validation line, or one of their own)."""
        for text in self.samples():
            self.say(f"  sample: {text!r}")
        if not validating:
            self.say(f"step {self.progress.step}: samples above (training loss {loss:.4f})")

    def checkpoint_stretch(self) -> None:
        """End of a stretch of eval_every steps: validate, save last.pt."""
        self.validate()
        self.save(checkpoint.LAST)

    def finish(self, status: str) -> None:
        """Validate where the last validation is stale, write last.pt (and best.pt if none), the curve."""
        p = self.progress
        if status == "budget" and self.validated_at != p.step:
            self.validate()
        self.save(checkpoint.LAST)
        if self.ranks.broadcast_int(int(self.main and not (self.run_dir / checkpoint.BEST).exists())):
            self.save(checkpoint.BEST)
        dump_rank_weights(self.model, self.ranks)
        if self.main:
            self.metrics.close()
            plot_curve(self.run_dir, best_step=p.best_step or None, target=self.t.target or None)
        if status == "interrupted":
            self.log(f"interrupted at step {p.step}; a resumable checkpoint is in {self.run_dir / checkpoint.LAST}"
                     f" (continue with `lstmgen train --out {self.run_dir} --resume`)")
        else:
            met = "" if not self.t.target else f" (target {self.t.target:g} {'met' if p.best_val <= self.t.target else 'not met'})"
            self.log(f"{status} at step {p.step}: best validation {p.best_val:.4f} nats/token at step {p.best_step}{met};"
                     f" checkpoints in {self.run_dir}")


class Pace:
    """How long things take in this run: a training step (the recent pace, weighted towards the last
    ~20 steps, so a plan follows a machine that gets busier or quieter), a validation with its
    checkpoint, and the start-up speed probe."""

    RECENT = 0.05  # weight of the newest step once the first CALIBRATE_AT have set the pace

    def __init__(self) -> None:
        self.step_s, self.stretch_s, self.probe_s, self.steps = 0.0, 0.0, 0.0, 0

    def step(self, seconds: float) -> None:
        self.steps += 1
        weight = 1 / self.steps if self.steps <= CALIBRATE_AT else self.RECENT
        self.step_s += weight * (seconds - self.step_s)

    def steady(self) -> bool:
        """Enough steps measured in this process to re-fit on (a resumed run measures afresh)."""
        return self.steps >= REFIT_EVERY


class ThreadTrial:
    """Keeps the thread count that the planner picked right as the machine changes. Another process
    that takes a core makes PyTorch's threads wait on each other (on 2 cores, one thread then ran up to
    50x faster than two); when it leaves, all cores are faster again. So now and then TRIAL steps run
    with the other count (all cores, or one) and the faster count is kept: every EVERY steps, and as
    soon as the last TRIAL steps ran SLOWER times slower than after the last decision (one process
    only: in a data-parallel run every rank must switch at the same step, so only the step count
    triggers a trial there).

        watching: the last TRIAL step times  ->  trial: switch, 1 step to settle, TRIAL - 1 timed
        ->  keep the faster count, watch again
    """

    EVERY, TRIAL, SLOWER = 300, 10, 2.0
    PERIOD_S = 60.0  # one process: a periodic trial at most this often (the other count may be far slower)

    def __init__(self, ranks: Dist) -> None:
        self.ranks = ranks
        self.cores = max(torch.get_num_threads(), os.cpu_count() or 1)
        self.recent: list[float] = []  # the last TRIAL step times while watching
        self.during: list[float] | None = None  # step times of a trial in progress
        self.before = self.ref = 0.0  # mean step time before the trial; after the last decision
        self.decided_at, self.since_s = 0, 0.0  # the step of the last decision, seconds of steps since

    def step(self, step: int, seconds: float) -> None:
        if self.during is not None:
            self.during.append(seconds)
            # a trial whose count is far slower ends at its first timed step: it may cost seconds a step
            far_slower = not self.ranks.enabled and len(self.during) >= 2 and seconds > 3 * self.before
            if len(self.during) == self.TRIAL or far_slower:
                self.decide(step)
            return
        self.since_s += seconds
        self.recent = [*self.recent, seconds][-self.TRIAL:]
        if len(self.recent) < self.TRIAL:
            return
        mean = sum(self.recent) / self.TRIAL
        self.ref = self.ref or mean
        if self.ranks.enabled:  # every rank must switch at the same step: the step count alone decides
            due = step - self.decided_at >= self.EVERY
        else:
            due = mean > self.SLOWER * self.ref or (step - self.decided_at >= self.EVERY
                                                      and self.since_s >= self.PERIOD_S)
        if due:
            self.before, self.during = mean, []
            self.switch()

    def switch(self) -> None:
        torch.set_num_threads(1 if torch.get_num_threads() > 1 else self.cores)

    def decide(self, step: int) -> None:
        timed = self.during[1:]  # the first step after a switch pays for it
        before, during = self.ranks.sum(self.before, sum(timed) / len(timed))
        if during > before:  # the other count was slower: go back
            self.switch()
        self.ref, self.decided_at, self.since_s = min(before, during) / self.ranks.world, step, 0.0
        self.during, self.recent = None, []


class LossWindow:
    """Training loss and throughput since the last metrics row (the curve's points are their means)."""

    def __init__(self, start: float) -> None:
        self.start, self.loss, self.tokens, self.steps = start, 0.0, 0, 0

    def add(self, loss: float, tokens: int) -> None:
        self.loss, self.tokens, self.steps = self.loss + loss, self.tokens + tokens, self.steps + 1

    def tokens_per_s(self, now: float) -> float:
        return self.tokens / max(1e-9, now - self.start)

    def take(self, now: float) -> dict:
        """The window's metrics row fields; the next window starts now."""
        row = {"train_loss": self.loss / max(1, self.steps), "tokens_per_s": round(self.tokens_per_s(now), 1)}
        self.start, self.loss, self.tokens, self.steps = now, 0.0, 0, 0
        return row


def dump_rank_weights(model: LSTMLanguageModel, ranks: Dist) -> None:
    """Tests set LSTMGEN_DUMP_RANK_WEIGHTS=DIR to compare the weights every rank ends with."""
    folder = os.environ.get("LSTMGEN_DUMP_RANK_WEIGHTS")
    if folder:
        torch.save(model.state_dict(), Path(folder) / f"rank{ranks.rank}.pt")


def plot_curve(run_dir: Path, best_step: int | None = None, exported_step: int | None = None,
               target: float | None = None) -> None:
    """loss.png from metrics.jsonl: training and validation loss against steps, with the checkpoint that
    `lstmgen export` took marked (before any export: the best one, which export takes by default) and
    the run's validation target, if it has one."""
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
        ax.plot(*zip(*train_pts), label="training loss", alpha=0.6)
    if val_pts:
        ax.plot(*zip(*val_pts), "o-", label="validation")
    marked = exported_step or best_step
    marks = [v for s, v in val_pts if s == marked]
    if marks:
        ax.plot([marked], [marks[-1]], "*", markersize=14, color="tab:red",
                label=f"{'exported' if exported_step else 'best'} checkpoint (step {marked})")
    if target:
        ax.axhline(target, linestyle="--", color="grey", label=f"target {target:g}")
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
