"""The model: token embedding -> stacked LSTM -> linear head over the vocabulary.

Readable in one sitting; shapes are noted where they change. The export (export.py) rebuilds exactly
this computation as ONNX LSTM ops, and checks that it did.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [num_layers, batch, hidden_size]


class LSTMLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_size, cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight  # [vocab, embed] serves both ways
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.1)
        if not self.cfg.tie_weights:
            nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        h = self.cfg.hidden_size
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(p)
                if name.startswith("bias_ih"):
                    # Forget-gate bias 1 (gate order i, f, g, o): remember by default early in training.
                    p.data[h: 2 * h] = 1.0

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = self.drop(self.embed(tokens))  # [B, T] -> [B, T, E]
        y, state = self._run_lstm(x, state)  # y [B, T, H]; state h, c [L, B, H]
        logits = self.head(self.drop(y))  # [B, T, V]
        return logits, state

    def _run_lstm(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        p = self.cfg.weight_drop
        if not (self.training and p > 0):
            return self.lstm(x, state)
        # Weight drop: one mask per forward pass on each recurrent matrix, the same at every time
        # step, so the recurrence is regularised without breaking the fused LSTM kernel. The
        # parameters themselves are untouched; the exported model uses them as they are.
        dropped = {name: nn.functional.dropout(w, p) for name, w in self.lstm.named_parameters()
                   if name.startswith("weight_hh")}
        return torch.func.functional_call(self.lstm, dropped, (x, state), strict=False)

    def zero_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        shape = (self.cfg.num_layers, batch, self.cfg.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)
