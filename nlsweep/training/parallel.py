"""Data parallelism inside one trial: N workers share every global batch, B/N rows each.

The training loop (`Trainer`) is written once for any number of workers; this module is the
only place that knows how many there are. With one worker every operation is the identity,
so a one-process trial runs exactly the code it always ran. With N workers (Ray Train's
`TorchTrainer` starts them and their torch.distributed process group: gloo on CPU, NCCL on
GPUs) the trainer relies on these rules, which make N x B/N equal 1 x B up to float
summation order:
- every worker draws the same global batch from the same data cursor and keeps rows
  [r B/N, (r+1) B/N): the data stream is sharded deterministically, and the cursor is one
  value to checkpoint;
- the model runs under DistributedDataParallel, which averages gradients; each worker scales
  its mean loss by N n_r / n so that the average is the global batch's mean even when the
  workers' shards hold different numbers of scored tokens (`n_r` of `n`);
- delta-rule input statistics X^T X and N are summed over workers before they enter the
  optimizer state, so every replica applies the same decay;
- recurrent and memory state stays with the rows it belongs to; a checkpoint gathers it
  into the one-worker layout (B rows), so checkpoints do not depend on the worker count;
- rank 0 evaluates, reports and writes checkpoints; the others train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


class Forward(nn.Module):
    """The model's training forward as one module, so that DDP sees every path the trainer
    takes (plain, with targets for the in-context learners, per level for surprise)."""

    def __init__(self, model: nn.Module, resets=None):
        super().__init__()
        self.model = model
        self.resets = resets  # state.reset_at: document (`documents.py`), inside this one call

    def forward(self, x, state, mode: str = "plain", targets=None):
        if self.resets is not None and mode != "levels":
            return self.resets(lambda xs, s, ts: self._call(xs, s, mode, ts), x, state, targets)
        return self._call(x, state, mode, targets)

    def _call(self, x, state, mode: str, targets):
        if mode == "levels":
            return self.model.forward_levels(x, state)
        if mode == "targets":
            return self.model(x, state, targets=targets)
        return self.model(x, state)


# Options of DistributedDataParallel for every model kind: a carried memory makes its
# initial weights unused after a stream's first batch (DDP must then not wait for their
# gradients), and no buffer is state that replicas must share (no batch norm; the memories'
# counters describe each worker's own rows).
DDP_OPTIONS = {"find_unused_parameters": True, "forward_sync_buffers": False}


def _identity(module: nn.Module) -> nn.Module:
    return module


@dataclass
class DataParallel:
    rank: int = 0
    world: int = 1
    wrap: Callable[[nn.Module], nn.Module] = field(default=_identity)
    """Wraps the training forward for gradient averaging (Ray Train's `prepare_model`)."""

    @classmethod
    def from_process_group(cls, wrap: Callable[[nn.Module], nn.Module]) -> DataParallel:
        return cls(dist.get_rank(), dist.get_world_size(), wrap)

    @property
    def active(self) -> bool:
        return self.world > 1

    def rows(self, batch: int) -> slice:
        per = batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the workers, in place (one collective per dtype)."""
        if not self.active or not tensors:
            return
        # one order on every worker (a set of dtypes iterates in a per-process order)
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def gather_state(self, state, dim: int):
        """The workers' row blocks of a recurrent state, concatenated in rank order."""
        if not self.active or state is None:
            return state
        out = []
        for t in state:
            t = t.contiguous()
            parts = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(parts, t)
            out.append(torch.cat(parts, dim=dim))
        return tuple(out)

    def shard_state(self, state, dim: int):
        """This worker's rows of a state in the one-worker layout."""
        if not self.active or state is None:
            return state
        return tuple(t.narrow(dim, self.rank * (t.shape[dim] // self.world),
                              t.shape[dim] // self.world).clone() for t in state)  # fmt: skip
