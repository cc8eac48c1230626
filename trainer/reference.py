"""The PyTorch reference generator: the engine's decode loop and sampler over a torch model.

Used for samples during training and as the bench's reference; because it shares
lstmgen.generator.decode_loop and the Numba sampler, it writes the same text as the engine for the
same seed (up to float rounding flipping a near-tie).
"""

from __future__ import annotations

import numpy as np
import torch

from lstmgen.generator import decode_loop
from lstmgen.sampling import SamplingParams
from lstmgen.tokenizer import Tokenizer

from .model import LSTMLanguageModel


class TorchBackend:
    """lstmgen.generator.Backend over an nn.Module (eval mode, no grad)."""

    def __init__(self, model: LSTMLanguageModel, device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def prefill(self, ids: np.ndarray):
        logits, state = self.model(torch.from_numpy(ids).to(self.device))
        return logits[:, -1].float().cpu().numpy(), state

    def expand(self, state, n: int):
        return tuple(s.repeat(1, n, 1) for s in state)

    def select(self, state, keep: np.ndarray):
        idx = torch.from_numpy(keep).to(self.device)
        return tuple(s.index_select(1, idx) for s in state)

    @torch.no_grad()
    def step(self, tokens: np.ndarray, state):
        logits, state = self.model(torch.from_numpy(tokens).to(self.device)[:, None], state)
        return logits[:, 0].float().cpu().numpy(), state


def torch_generate(model: LSTMLanguageModel, tokenizer: Tokenizer, start_ids: list[int], records: bool, *,
                   num: int, seed: int, max_tokens: int, params: SamplingParams | None = None,
                   prompt_ids: list[int] = (), device: torch.device | str = "cpu", allow_unk: bool = False) -> list[str]:
    """`num` samples as texts (prompt included), exactly as lstmgen.Generator.generate builds them."""
    params = params or SamplingParams()
    out: list[list[int]] = [[] for _ in range(num)]
    eos = tokenizer.eos_id
    banned = [] if allow_unk or tokenizer.unk_id is None else [tokenizer.unk_id]
    for active, tokens in decode_loop(TorchBackend(model, device), [*start_ids, *prompt_ids], list(range(num)),
                                      max_tokens, params, seed, eos, banned=banned):
        for a, t in zip(active, tokens):
            if t != eos:
                out[a].append(int(t))
    return [tokenizer.decode([*prompt_ids, *o]) for o in out]
