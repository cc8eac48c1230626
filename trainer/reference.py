"""The PyTorch reference generator: the engine's decode loop and sampler over a torch model.

Used for samples during training and as the bench's reference; because it runs
lstmgen.decoding.DecodeLoop and the Numba sampler, it writes the same text as the engine for the
same seed (up to float rounding flipping a near-tie).
"""

from __future__ import annotations

import numpy as np
import torch

from lstmgen.decoding import DecodeLoop, Job, Request
from lstmgen.sampling import SamplingParams
from lstmgen.tokenizer import Tokenizer

from .model import LSTMLanguageModel


class TorchBackend:
    """lstmgen.decoding.Backend over an nn.Module (eval mode, no grad)."""

    def __init__(self, model: LSTMLanguageModel, device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def prefill(self, ids: np.ndarray):
        logits, state = self.model(torch.from_numpy(ids).to(self.device))
        return logits.float().cpu().numpy(), state

    def expand(self, state, n: int):
        return tuple(s.repeat(1, n, 1) for s in state)

    def join(self, state, other):
        if state is None:
            return other
        return tuple(torch.cat([a, b], dim=1) for a, b in zip(state, other))

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
    banned = [] if allow_unk or tokenizer.unk_id is None else [tokenizer.unk_id]
    request = Request(num=num, prompt_ids=list(prompt_ids), max_tokens=max_tokens, params=params or SamplingParams(),
                      seed=seed, stop=[], banned=banned)
    job = Job(request, [*start_ids, *prompt_ids], tokenizer)
    DecodeLoop(TorchBackend(model, device), tokenizer).run([job])
    return job.results()
