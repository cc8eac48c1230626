"""The speed probe: training tokens/s of a model shape on this machine, now (for the planner).

Why measure instead of looking up a table: the same 2-core machine class runs 2x faster or slower from
day to day, and a second process on the machine can slow PyTorch's threads tenfold. A probe of a few
real optimizer steps (forward, backward, AdamW) on random tokens costs about a second per shape.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .model import LSTMLanguageModel


def probe_speed(shape: tuple[int, int, int], vocab_size: int, batch_size: int, seq_len: int, device: torch.device,
                *, dropout: float = 0.1, seconds: float = 0.6, clock: Callable[[], float] = time.perf_counter) -> float:
    """Training tokens/s of (embed, hidden, layers) at batch x seq_len: one warm-up step, then steps for
    about `seconds` (at least two)."""
    embed, hidden, layers = shape
    state = torch.get_rng_state()  # the probe must not move the run's random numbers
    try:
        torch.manual_seed(0)
        model = LSTMLanguageModel(ModelConfig(vocab_size=vocab_size, embed_dim=embed, hidden_size=hidden,
                                              num_layers=layers, dropout=dropout)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, vocab_size, (batch_size, seq_len + 1), device=device)

        def step() -> None:
            logits, _ = model(x[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        n, start = 0, clock()
        while n < 2 or clock() - start < seconds:
            step()
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return n * batch_size * seq_len / max(1e-9, clock() - start)
    finally:
        torch.set_rng_state(state)
