"""TITAN: the Transformer with a Titans neural memory in every block (no CMS), used in one of
the Titans paper's three ways (`memory_use`, sec. 4 of the paper).

Notation (per block i; `models/titans_memory.py` defines Mem, Mem*(u; W) a read of the memory
W without writing; `models/blocks.py` Attn(u | p), attention with prefix tokens p; P_i the
block's `persistent_tokens` learned tokens, none when 0)
  mal (memory as a layer, the default):
    h'   = h + Attn_i(LN(h) | P_i)
    h''  = h' + Mem_i(LN_m(h'); W_i, S_i)     memory written token by token as it reads
    h    = h'' + MLP_i(LN(h''))
  mag (memory as a gate; Attn limited to `window`):
    a    = Attn_i(LN(h) | P_i),  m = Mem_i(LN_m(h); W_i, S_i)     in parallel
    h''  = h + LN_a(a) * sigmoid(LN_g(m)),  h = h'' + MLP_i(LN(h''))
  mac (memory as context), per segment s of `mac_segment` tokens of the call:
    r    = Mem*_i(LN_m(h_s); W_i)           retrieved with the memory before the segment
    h'   = h_s + Attn_i(LN(h_s) | [P_i; r])  query t sees P_i, r_u and h_u for u <= t
    h''  = h' + Mem_i(LN_m(h'); W_i, S_i)   the segment's attention output written
    h_s  = h'' + MLP_i(LN(h''))
  logits = W_head LN(h_L)
The paper's MAL puts the memory before the attention and its MAC and MAG combine with a
product written y (x) M(y); here mal keeps the block order this kind had before memory_use
existed (attention, memory, MLP: over stacked blocks the order differs only at the ends), mac
adds the memory's read-out to the residual stream, and mag's gate is the normalised product.
Persistent tokens are attention keys and values only: they are never written to the memory,
so a carried memory's state does not depend on how a stream is split into calls.
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

from models.common import require
from models.deep_memory import DeepMomentumMemory
from models.titans_memory import MemoryConfig, NeuralMemory
from models.transformer import AttentionConfig, AttentionLM, Block


@dataclass
class TitansConfig(AttentionConfig, MemoryConfig):
    """`model:` section for `kind: titans`."""

    kind: Literal["titans"] = "titans"
    memory_use: Literal["mal", "mac", "mag"] = "mal"
    """How the blocks use the memory: as a layer after attention (mal), as context of the
    attention per segment (mac) or as a gate beside sliding-window attention (mag)."""
    persistent_tokens: int = 0
    """Learned tokens every attention query sees first (keys and values only)."""
    mac_segment: int = 0
    """Tokens per segment with memory_use mac (required there, refused elsewhere)."""

    def __post_init__(self):
        AttentionConfig.__post_init__(self)
        self.check_memory(self.d_model)
        require(
            self.memory_use in ("mal", "mac", "mag"),
            "memory_use",
            f"mal, mac or mag, got {self.memory_use!r}",
        )
        require(
            self.persistent_tokens >= 0,
            "persistent_tokens",
            f"0 (none) or a positive integer, got {self.persistent_tokens}",
        )
        if self.memory_use == "mac":
            require(
                self.memory_optimizer == "momentum",
                "memory_optimizer",
                "momentum with memory_use mac (a MAC segment reads the memory through the "
                "classic momentum's scan; deep_momentum's chunk form has no segment reads)",
            )
            require(
                self.mac_segment >= 1,
                "mac_segment",
                f"a positive number of tokens with memory_use mac, got {self.mac_segment}",
            )
        else:
            require(
                self.mac_segment == 0,
                "mac_segment",
                f"unset: it acts only with memory_use mac (memory_use is {self.memory_use})",
            )
        if self.memory_use == "mag":
            require(
                self.window >= 1,
                "window",
                "a sliding window (>= 1) with memory_use mag, which pairs the memory with "
                f"sliding-window attention, got {self.window}",
            )


class MemoryBlock(nn.Module):
    """A transformer block and a neural memory, combined as `memory_use` says."""

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        d = cfg.d_model
        self.block = Block(cfg)
        self.norm_mem = nn.LayerNorm(d)
        self.memory = make_memory(d, cfg)
        self.use, self.segment = cfg.memory_use, cfg.mac_segment
        n = cfg.persistent_tokens
        # (1, N, d): a token table, so optimizers treat it as the embedding it is
        self.persistent = nn.Parameter(torch.randn(1, n, d)) if n else None
        if self.use == "mag":
            self.norm_a, self.norm_g = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, h: torch.Tensor, state=None):
        if self.use == "mac":
            return self._mac(h, state)
        b = self.block
        if self.use == "mag":
            a = b.attn(b.norm_attn(h), self.persistent)
            m, state = self.memory(self.norm_mem(h), state)
            h = h + self.norm_a(a) * torch.sigmoid(self.norm_g(m))
        else:
            h = h + b.attn(b.norm_attn(h), self.persistent)
            m, state = self.memory(self.norm_mem(h), state)
            h = h + m
        return h + b.mlp(b.norm_mlp(h)), state

    def _mac(self, h: torch.Tensor, state):
        """Only the read, the attention and the write depend on the segment before; the
        memory's read-outs, the norms of the block's input and its MLP are per token and
        run once per call."""
        b, xs = self.block, []
        queries = self.memory.recall_queries(self.norm_mem(h))
        hn = b.norm_attn(h)

        def segment(t0: int, t1: int, ws):
            r = self.memory.recall(queries[:, t0:t1], ws)
            xs.append(h[:, t0:t1] + b.attn(hn[:, t0:t1], self.persistent, r))
            return self.norm_mem(xs[-1])

        m, state = self.memory.scan(h.shape[0], h.shape[1], self.segment, segment, state)
        h = (torch.cat(xs, dim=1) if len(xs) > 1 else xs[0]) + m
        return h + b.mlp(b.norm_mlp(h)), state


def memory_state_names(n_layers: int, cfg: MemoryConfig) -> tuple[str, ...]:
    depth = cfg.memory_depth
    ws = [f"w{j + 1}" for j in range(depth)]
    ss = [f"s{j + 1}" for j in range(depth)]
    cs = [f"c{j + 1}" for j in range(depth)]  # the memory at the current chunk's start
    names = (*ws, *ss, *cs, "pos")
    if cfg.memory_optimizer == "deep_momentum":  # each weight's momentum memory A1, A2
        names += (*(f"k{j + 1}" for j in range(depth)), *(f"v{j + 1}" for j in range(depth)))
    return tuple(f"mem{i}_{n}" for i in range(n_layers) for n in names)


def memory_state_size(cfg: MemoryConfig) -> int:
    """State tensors per memory: W, S and W_c per layer of the memory, and the position;
    with deep momentum also A1 and A2 per layer."""
    deep = cfg.memory_optimizer == "deep_momentum"
    return (5 if deep else 3) * cfg.memory_depth + 1


def make_memory(d_model: int, cfg: MemoryConfig) -> NeuralMemory:
    """The Titans memory of `cfg`'s inner optimizer."""
    if cfg.memory_optimizer == "deep_momentum":
        return DeepMomentumMemory(d_model, cfg)
    return NeuralMemory(d_model, cfg)


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

    def memories(self) -> list[nn.Module]:
        """The blocks' test-time memories (Titans or self-modifying)."""
        return [m for m in self.modules() if getattr(type(m), "is_memory", False)]

    def inner_metrics(self) -> dict[str, float]:
        """Counters that prove the memories wrote, per layer: training tokens written, writes
        the bound scaled down, and the norm of the update (momentum) S after the last training
        batch; and, of that batch, the memory's weight norm, the values' mean norm, the
        gates' ranges, the largest write before the bound and the share of writes bounded."""
        out = {}
        for i, mem in enumerate(self.memories()):
            out[f"memory/{i}/writes"] = float(mem.writes.item())
            out[f"memory/{i}/update_norm"] = float(mem.update_norm.item())
            if hasattr(mem, "bounded"):  # writes cut to memory_max_write
                out[f"memory/{i}/bounded"] = float(mem.bounded.item())
            for k, v in mem.diagnostics.items():
                out[f"memory/{i}/{k}"] = float(v)
        return out

    def warnings(self, history: list[dict]) -> dict[str, str]:
        """Inner-update paths that were configured but never fired in a run (pitfall 6), and
        memories the write bound saturated."""
        last = history[-1] if history else {}
        out = {
            f"memory.{k.split('/')[1]}": f"memory of layer {k.split('/')[1]} wrote no token"
            for k, v in last.items()
            if k.startswith("memory/") and k.endswith("/writes") and v == 0
        }
        mems = self.memories()
        cap = getattr(mems[0].cfg, "memory_max_write", 0) if mems else 0
        bounded = []  # each memory's count of writes the bound cut, where it keeps one
        for i, mem in enumerate(mems):
            count, writes = last.get(f"memory/{i}/bounded"), last.get(f"memory/{i}/writes")
            if count is None:
                continue
            bounded.append(count)
            # a memory whose writes are mostly cut is saturated: it stays finite, as the bound
            # is there for, but it no longer stores what it reads (its loss, not a NaN, shows it)
            share = count / (writes * mem.write_units) if count and writes else 0.0
            if share > 0.5:
                out[f"memory.{i}.bounded"] = (
                    f"memory of layer {i}: {share:.0%} of its writes cut to memory_max_write "
                    f"{cap:g} (a saturated memory; weight norm "
                    f"{last.get(f'memory/{i}/weight_norm', float('nan')):.3g})"
                )
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
            memory_state_size(cfg),
        )
        self.state_names = memory_state_names(cfg.n_layers, cfg)
