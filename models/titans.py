"""TITAN: the Transformer with a Titans neural memory in every block (no CMS).

Notation (per block i; `models/titans_memory.py` defines Mem)
    h'   = h + Attn_i(LN(h))
    h''  = h' + Mem_i(LN(h'); W_i, S_i)        memory written token by token as it reads
    h    = h'' + MLP_i(LN(h''))
    logits = W_head LN(h_L)
Update frequencies: the memory weights W_i and momenta S_i are inner state, written at every
token (gradients shared within chunks of `memory_chunk` tokens); everything else is an outer
parameter on the single level "fast". Between batches the memory restarts from its learned
W_0 (`state.mode: reset`, Titans' per-sequence memory) or is carried along the stream,
detached (`persistent`, `reset_every`). Evaluation carries its own memory, never the
training one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models.titans_memory import MemoryConfig, NeuralMemory
from models.transformer import AttentionConfig, AttentionLM, Block


@dataclass
class TitansConfig(AttentionConfig, MemoryConfig):
    """`model:` section for `kind: titans`."""

    kind: Literal["titans"] = "titans"

    def __post_init__(self):
        AttentionConfig.__post_init__(self)
        self.check_memory(self.d_model)


class MemoryBlock(nn.Module):
    """A transformer block with a neural memory between attention and MLP."""

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        self.block = Block(cfg)
        self.norm_mem = nn.LayerNorm(cfg.d_model)
        self.memory = NeuralMemory(cfg.d_model, cfg)

    def forward(self, h: torch.Tensor, state=None):
        b = self.block
        h = h + b.attn(b.norm_attn(h))
        m, state = self.memory(self.norm_mem(h), state)
        h = h + m
        return h + b.mlp(b.norm_mlp(h)), state


def memory_state_names(n_layers: int, depth: int) -> tuple[str, ...]:
    ws = [f"w{j + 1}" for j in range(depth)]
    ss = [f"s{j + 1}" for j in range(depth)]
    cs = [f"c{j + 1}" for j in range(depth)]  # the memory at the current chunk's start
    names = (*ws, *ss, *cs, "pos")
    return tuple(f"mem{i}_{n}" for i in range(n_layers) for n in names)


def memory_state_size(depth: int) -> int:
    """State tensors per memory: W, S and W_c per layer of the memory, and the position."""
    return 3 * depth + 1


class MemoryLM(AttentionLM):
    """An attention LM whose blocks return (h, state); the state is their tuples, flat."""

    carries_state = True
    # Its state is what it learned in context (the memory's weights), so a prompt replayed
    # through it before a query is test-time memorization (`memorizes`, capabilities.py).
    memorizes = True
    # Attention sees only the current call's tokens, so a split stream differs from one pass
    # at the model's output; the memory's state carries exactly (its own split tests).
    state_is_context = False

    def __init__(self, cfg, vocab_size: int, blocks: list[nn.Module], per_block: int):
        super().__init__(cfg, vocab_size, blocks)
        self.per_block = per_block

    def body(self, idx: torch.Tensor, state=None):
        h = self.embed(idx)
        out = []
        for i, block in enumerate(self.blocks):
            s = state[i * self.per_block : (i + 1) * self.per_block] if state else None
            h, s = block(h, s)
            out.extend(s)
        return h, tuple(out)

    def memories(self) -> list[NeuralMemory]:
        return [m for m in self.modules() if isinstance(m, NeuralMemory)]

    def inner_metrics(self) -> dict[str, float]:
        """Counters that prove the memories wrote, per layer: training tokens written, writes
        the bound scaled down, and the norm of the update (momentum) S after the last training
        batch; and, of that batch, the memory's weight norm, the values' mean norm, the
        gates' ranges, the largest write before the bound and the share of writes bounded."""
        out = {}
        for i, mem in enumerate(self.memories()):
            out[f"memory/{i}/writes"] = float(mem.writes.item())
            out[f"memory/{i}/update_norm"] = float(mem.update_norm.item())
            out[f"memory/{i}/bounded"] = float(mem.bounded.item())  # writes cut to max_write
            for k, v in mem.diagnostics.items():
                out[f"memory/{i}/{k}"] = float(v)
        return out

    def warnings(self, history: list[dict]) -> dict[str, str]:
        """Inner-update paths that were configured but never fired in a run (pitfall 6)."""
        last = history[-1] if history else {}
        out = {
            f"memory.{k.split('/')[1]}": f"memory of layer {k.split('/')[1]} wrote no token"
            for k, v in last.items()
            if k.startswith("memory/") and k.endswith("/writes") and v == 0
        }
        mems = self.memories()
        cap = mems[0].cfg.memory_max_write if mems else 0
        bounded = [v for k, v in last.items() if k.startswith("memory/") and k.endswith("/bounded")]
        if cap and bounded and not any(bounded):
            biggest = max(
                (v for m in history for k, v in m.items() if k.endswith("/write_max")), default=0
            )
            out["memory.max_write"] = (
                f"memory_max_write {cap:g} never bound (largest write at an evaluation "
                f"{biggest:.3g})"
            )
        return out


class Titans(MemoryLM):
    def __init__(self, cfg: TitansConfig, vocab_size: int):
        super().__init__(
            cfg,
            vocab_size,
            [MemoryBlock(cfg) for _ in range(cfg.n_layers)],
            memory_state_size(cfg.memory_depth),
        )
        self.state_names = memory_state_names(cfg.n_layers, cfg.memory_depth)
