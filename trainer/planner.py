"""The time-budget planner: batch size, sequence length and model size for the best validation loss
that `--time-budget` seconds can buy on this machine, now. Torch-free; the trainer hands it a speed
probe (tokens/s of each candidate shape, measured at start-up), tests hand it fixed speeds.

Why a planner: the defaults (hidden 256, batch 64 x 128 tokens) suit a long run. Under a 300 s budget
on 2 cores they took 200 steps and wrote gibberish (3.05 nats/char on a novel), while batch 32 x 64
took 2,001 steps and reached 1.76. What wins in a budget is what learns most per second.

How it predicts (one line per candidate, the lowest wins):

    tokens       = probed tokens/s x (budget - probe - validation share)
    effective    = tokens with repeated epochs discounted (Muennighoff et al. 2023, "Scaling
                   data-constrained language models": R* = 15, so a few epochs are nearly as good as
                   new text and many are not)
    loss         = E + A x (effective / 1e6) ^ -alpha          per shape, fitted to REFERENCE below

REFERENCE holds measured learning curves, one per candidate shape: validation nats/char against
training tokens on nietzsche.txt (600 KB of English prose), batch 32 x 64, one thread, AdamW 3e-3 with a
cosine schedule over the run (the command is in the table's docstring). Loss per token does not depend
on the machine's speed, so the table travels; the speed is measured on the spot, every run. The curves
rank the shapes; the absolute figures are nietzsche's.

Batch and window: throughput on CPU hardly depends on batch x window (tokens/s within 15% from 1k to
8k tokens a step, measured), so the step count is free to choose: the window is SEQ_LEN tokens (the
state is carried between windows, so a short window loses little context and gives more updates) and
the batch aims at TARGET_STEPS optimizer steps, a power of two in [MIN_BATCH, MAX_BATCH]. Records are
short (a name is 8 tokens): their tokens/s grows with the batch, so their batch is at least the probe's.

Explicit settings always win: a flag (or recipe value) the user gave is kept, and the planner chooses
only the rest; when what was fixed makes the budget too small, the warning names that flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Candidate shapes: (embed_dim, hidden_size, num_layers), each with a measured curve in REFERENCE.
SHAPES: list[tuple[int, int, int]] = [(64, 128, 2), (64, 256, 2), (64, 384, 2)]
SEQ_LEN = 64
PROBE_BATCH = 32  # the speed probe's batch (rows)
TARGET_STEPS = 3000
MIN_BATCH, MAX_BATCH = 16, 64  # past 4k tokens a step, a step learns little more on these small models
MIN_STEPS = 300  # fewer optimizer steps than this learn too little; such candidates are passed over
EPOCH_DECAY = 15.0  # R*: repeated data's value decays over this many epochs (Muennighoff et al. 2023)
EVAL_SHARE = 0.05  # validation and checkpoints may take this share of the budget
MIN_EVALS, MAX_EVALS = 3, 20
EVAL_SPEEDUP = 3.0  # a forward pass costs about a third of a training step per token
SKIP_POINTS = 2  # the first evaluations of a reference run are the warm-up's transient, not the power law
EXTRAPOLATE = 2.0  # a curve is trusted up to this multiple of the tokens measured (Curve)

# Measured on 2026-11-30 (2-core Intel Xeon, torch 2.13 CPU): `lstmgen train ../shared/data/nietzsche.txt
# --hidden-size H --batch-size 32 --seq-len 64 --max-steps S --epochs 1000 --eval-every E --patience 0
# --threads T` with (H, S, E, T) = (128, 6000, 500, 1), (256, 4000, 400, 1), (384, 1600, 200, 2), embed
# 64, 2 layers, the other settings default: (training tokens = steps x 2048, validation nats/char) at
# each evaluation. Loss per token does not depend on the thread count or the machine's speed.
REFERENCE: dict[int, list[tuple[float, float]]] = {
    128: [(1024000, 2.3186), (2048000, 1.9861), (3072000, 1.8608), (4096000, 1.7876), (5120000, 1.7354),
          (6144000, 1.7000), (7168000, 1.6786), (8192000, 1.6577), (9216000, 1.6422), (10240000, 1.6344),
          (11264000, 1.6284), (12288000, 1.6250)],
    256: [(819200, 2.2445), (1638400, 1.8650), (2457600, 1.7284), (3276800, 1.6602), (4096000, 1.6082),
          (4915200, 1.5747), (5734400, 1.5569), (6553600, 1.5455), (7372800, 1.5335), (8192000, 1.5248)],
    384: [(409600, 2.4005), (819200, 2.0135), (1228800, 1.8347), (1638400, 1.7310), (2048000, 1.6736),
          (2457600, 1.6440), (2867200, 1.6230), (3276800, 1.6086)],
}
REFERENCE_TOKENS = 540_810  # nietzsche.txt's training split: the reference runs saw it many times over


@dataclass
class Curve:
    """loss(tokens) = floor + scale * (tokens / 1e6) ** -alpha, least squares over a grid of alpha.

    Beyond EXTRAPOLATE x the last measured point the curve stays flat: a power law fitted to a short
    run does not know where a small model's capacity ends, and without this a fast small model is
    promised gains that it was never measured to make."""

    floor: float
    scale: float
    alpha: float
    last: float = math.inf  # the most tokens measured

    def __call__(self, tokens: float) -> float:
        tokens = min(tokens, EXTRAPOLATE * self.last)
        return self.floor + self.scale * max(tokens / 1e6, 1e-3) ** -self.alpha

    @classmethod
    def fit(cls, points: list[tuple[float, float]]) -> "Curve":
        best = None
        last = max(t for t, _ in points)
        for k in range(5, 151):
            alpha = k / 100
            xs = [max(t / 1e6, 1e-3) ** -alpha for t, _ in points]
            ys = [v for _, v in points]
            n, sx, sy = len(xs), sum(xs), sum(ys)
            sxx, sxy = sum(x * x for x in xs), sum(x * y for x, y in zip(xs, ys))
            den = n * sxx - sx * sx
            if den <= 0:
                continue
            scale = (n * sxy - sx * sy) / den
            floor = (sy - scale * sx) / n
            err = sum((floor + scale * x - y) ** 2 for x, y in zip(xs, ys))
            if scale > 0 and (best is None or err < best[0]):
                best = (err, cls(floor, scale, alpha, last))
        if best is None:
            raise ValueError("reference curve cannot be fitted")
        return best[1]


def curves() -> dict[int, Curve]:
    """Each shape's curve against *effective* tokens: the reference runs repeated their small corpus
    too, so their x axis is discounted the same way as a prediction's."""
    return {hidden: Curve.fit([(effective_tokens(t, REFERENCE_TOKENS), v) for t, v in points[SKIP_POINTS:]])
            for hidden, points in REFERENCE.items()}


def effective_tokens(tokens: float, corpus_tokens: float) -> float:
    """Tokens trained, with repeated epochs worth less (Muennighoff et al.'s D' = U + U R* (1 - e^(-R/R*)))."""
    if corpus_tokens <= 0 or tokens <= corpus_tokens:
        return tokens
    repeats = tokens / corpus_tokens - 1
    return corpus_tokens * (1 + EPOCH_DECAY * (1 - math.exp(-repeats / EPOCH_DECAY)))


@dataclass
class Candidate:
    shape: tuple[int, int, int]
    tokens_per_s: float
    tokens: float = 0.0
    predicted: float = math.inf


@dataclass
class Plan:
    """What the planner chose, and why (shown to the user, saved in the metrics)."""

    shape: tuple[int, int, int]
    batch_size: int
    seq_len: int
    eval_every: int
    steps: int
    tokens_per_s: float
    predicted: float  # nats/token on the reference curves (ranks candidates; not a promise on this corpus)
    candidates: list[Candidate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    records: bool = False

    def describe(self) -> str:
        e, h, n = self.shape
        batch = f"{self.batch_size} records" if self.records else f"{self.batch_size} x {self.seq_len} tokens"
        return (f"embed {e}, hidden {h} x {n} layers, batch {batch}, about {self.steps:,} steps at"
                f" {self.tokens_per_s:,.0f} tokens/s, validation every {self.eval_every}")


def choose(budget_s: float, speeds: dict[tuple[int, int, int], float], *, corpus_tokens: int, records: bool,
           mean_record_tokens: float = 0.0, fixed: dict[str, int] | None = None, val_tokens: int = 0,
           overhead_s: float = 0.0) -> Plan:
    """The plan for `budget_s` seconds. `speeds`: measured training tokens/s of each shape to consider
    (one shape when the user fixed it); `fixed`: settings the user gave (batch_size, seq_len,
    eval_every), kept as they are; `overhead_s`: budget already spent (the probe)."""
    fixed = fixed or {}
    table = curves()
    usable = max(0.0, budget_s - overhead_s) * (1 - EVAL_SHARE)
    cands = []
    for shape, tps in speeds.items():
        c = Candidate(shape, tps, tokens=tps * usable)
        curve = table.get(shape[1]) or _nearest(table, shape[1])
        c.predicted = curve(effective_tokens(c.tokens, corpus_tokens))
        cands.append(c)
    seq_len = fixed.get("seq_len", SEQ_LEN)
    window = max(1.0, mean_record_tokens) if records else seq_len  # tokens a batch row holds

    def batch_for(c: Candidate) -> int:
        # Records are short: their throughput grows with the batch, so never below the probed batch.
        return fixed.get("batch_size") or max(pick_batch(c.tokens / window), PROBE_BATCH if records else 0)

    def steps_for(c: Candidate) -> int:
        return int(c.tokens / (batch_for(c) * window))

    viable = [c for c in cands if steps_for(c) >= MIN_STEPS] or [max(cands, key=steps_for)]
    best = min(viable, key=lambda c: c.predicted)
    steps = max(1, steps_for(best))
    plan = Plan(best.shape, batch_for(best), seq_len, fixed.get("eval_every") or 0, steps, best.tokens_per_s,
                best.predicted, sorted(cands, key=lambda c: c.predicted), records=records)
    if not plan.eval_every:
        plan.eval_every = eval_interval(budget_s, steps, val_tokens, best.tokens_per_s)
    plan.warnings = warnings(plan, fixed, speeds)
    return plan


def pick_batch(windows: float) -> int:
    """The power-of-two batch that gives about TARGET_STEPS steps over `windows` windows of tokens."""
    want = windows / TARGET_STEPS
    batch = 2 ** round(math.log2(max(want, 1e-9)))
    return int(min(MAX_BATCH, max(MIN_BATCH, batch)))


def eval_interval(budget_s: float, steps: int, val_tokens: int, tokens_per_s: float) -> int:
    """Steps between validations, so that they take about EVAL_SHARE of the budget (3 to 20 of them)."""
    seconds = val_tokens / max(1.0, tokens_per_s * EVAL_SPEEDUP)
    evals = int(min(MAX_EVALS, max(MIN_EVALS, EVAL_SHARE * budget_s / max(seconds, 1e-9))))
    return max(1, steps // evals)


def warnings(plan: Plan, fixed: dict[str, int], speeds: dict) -> list[str]:
    """What the user should know, naming the flags to change."""
    out = []
    if plan.steps < MIN_STEPS:
        given = [f"--{k.replace('_', '-')}" for k in ("hidden_size", "batch_size", "seq_len") if k in fixed]
        hint = f" or drop {', '.join(given)} to let the planner choose" if given else " or a smaller model"
        out.append(f"warning: the {plan.describe()} plan has only {plan.steps} steps, too few to learn much;"
                   f" give a longer --time-budget{hint}")
    return out


def _nearest(table: dict[int, Curve], hidden: int) -> Curve:
    return table[min(table, key=lambda h: abs(math.log(h / hidden)))]
