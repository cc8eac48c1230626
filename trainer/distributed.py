"""Data-parallel training across processes (torchrun): who am I, and the few collectives the loop needs.

Launched by `torchrun --nproc_per_node=N -m lstmgen train ...` (or `lstmgen train --nproc N`), each
process reads its own share of every global batch, gradients are averaged by DistributedDataParallel
(gloo on CPU, NCCL on CUDA), validation sums are reduced across ranks, the ranks agree every step on
whether to stop, and only rank 0 writes files. With one process every call here is a no-op.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from lstmgen.errors import LstmgenError


class Dist:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        if not self.enabled:
            return device
        if device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            device = torch.device("cuda", self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
        self.device = device
        return device

    def stop(self, completed: bool) -> None:
        """Tear the group down. After a completed run, first wait until every rank is done with its
        collectives, so no rank tears down while a peer still talks to it (not after an error: the
        peers may never arrive)."""
        if self.enabled and dist.is_initialized():
            if completed:
                dist.barrier()
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, *flags: bool) -> list[bool]:
        if not self.enabled:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def broadcast_int(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, 0)
        return int(t.item())

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor (same shape on all ranks), on the CPU, in rank order."""
        if not self.enabled:
            return [t.detach().cpu()]
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return [p.cpu() for p in parts]


def launch(nproc: int, argv: list[str]) -> int:
    """`lstmgen train --nproc N ...`: re-run the same command under torchrun with N processes."""
    if nproc < 1 or nproc > 1024:
        raise LstmgenError(f"--nproc must be in [1, 1024], got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lstmgen", "train", *argv]
    return subprocess.call(cmd)
