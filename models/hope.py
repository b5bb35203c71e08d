"""HOPE: attention (+ Titans memory) followed by a CMS chain updated in context by the teach
signal. `hope_attention` has attention blocks; `hope` has Titans memory blocks.

Notation (shared notes §1, "token periods" reading)
    h            output of the attention (hope: attention + memory) blocks, (B, T, d)
    y_L, dW_l    the CMS chain on h: L residual MLP blocks, one per token period C_l, whose
                 fast weights dW_l step in context every C_l tokens (models/cms_chain.py)
    logits       = W_head LN_out(y_L)
    s(i)         the teach scale (models/teach.py); it also multiplies the Titans memory's
                 writes in `hope`, so s = 0 turns every inner update off
Update frequencies: everything here is an outer parameter except the chain's fast weights,
momenta, pending sums and token clock and the memories' state: inner state, per batch row,
reset per sequence (`state.mode: reset`) or carried along the streams (`persistent`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from models.cms_chain import CMSChain
from models.teach import TeachConfig
from models.titans import (
    MemoryBlock,
    MemoryLM,
    TitansConfig,
    memory_state_names,
    memory_state_size,
)
from models.transformer import AttentionConfig, AttentionLM, Block


@dataclass
class HopeAttentionConfig(AttentionConfig):
    """`model:` section for `kind: hope_attention` (the CMS chain is set in `cms:`)."""

    kind: Literal["hope_attention"] = "hope_attention"
    inner_updates: bool = True
    """false: the CMS chain keeps its outer weights (an ablation; teach: is then unused)."""


@dataclass
class HopeConfig(TitansConfig):
    """`model:` section for `kind: hope`."""

    kind: Literal["hope"] = "hope"
    inner_updates: bool = True
    """false: no inner update at all (CMS chain and memory writes): the ablation."""


class _Hope:
    """What both HOPE kinds add to their attention LM: the chain, targets, teach scale."""

    uses_targets = True
    carries_state = True
    memorizes = True  # the chain's fast weights (and the memory's) are learned in context
    state_is_context = False  # attention sees one call; the chain's state splits exactly
    teach_scale = 1.0

    def _hope_init(self, cfg, cms, teach):
        self.inner = cfg.inner_updates
        self.chain = CMSChain(
            cfg.d_model,
            cfg.d_ff,
            cms.token_periods,
            cms.inner_lrs(),
            cms.inner_momentum,
            teach,
            cms.inner_chunk,
            cms.deep_momentum_hidden,
            cms.deep_momentum_lr,
        )
        self.n_chain = self.chain.stride * len(cms.token_periods) + 1
        names = self.chain_state_names(len(cms.token_periods), bool(cms.deep_momentum_hidden))
        self.state_names = (*self.state_names, *names)

    @staticmethod
    def chain_state_names(n: int, deep: bool = False) -> tuple[str, ...]:
        parts = ("dw1", "m1", "g1", "dw2", "m2", "g2")
        parts += ("k1", "v1", "k2", "v2") if deep else ()  # the momentum memories' A1, A2
        return (*(f"cms{i}_{p}" for i in range(n) for p in parts), "cms_clock")

    def forward(self, idx: torch.Tensor, state=None, targets=None):
        scale = self.teach_scale if self.inner else 0.0
        for mem in self.memories():
            mem.write_scale = scale
        inner_state = None if state is None else state[: len(state) - self.n_chain]
        chain_state = None if state is None else state[len(state) - self.n_chain :]
        h, inner_state = self.body(idx, inner_state)
        logits, chain_state = self.chain(h, chain_state, self.head, self.norm_out, targets, scale)
        return logits, (*(inner_state or ()), *chain_state)

    def inner_metrics(self) -> dict[str, float]:
        return {**super().inner_metrics(), **self.chain.read_stats()}

    def warnings(self, history: list[dict]) -> dict[str, str]:
        if not history or not self.inner or not any(m.get("teach/scale", 0) for m in history):
            return {}  # inner updates off by design (ablation, or scale 0): nothing to fire
        out = super().warnings(history)
        for k, v in history[-1].items():
            if k.startswith("cms_inner/") and k.endswith("/updates") and v == 0:
                out[f"cms_inner.{k.split('/')[1]}"] = f"CMS block {k.split('/')[1]} never updated"
        teach = self.chain.teach
        if teach.clip and not any(m.get("teach/clip_rate", 0) for m in history):
            biggest = max(m.get("teach/scaled_norm", 0) for m in history)
            out["teach.clip"] = f"teach.clip {teach.clip:g} never bound (mean scaled norm "
            out["teach.clip"] += f"up to {biggest:.3g})"
        if teach.threshold and not any(m.get("teach/gate_rate", 0) for m in history):
            out["teach.threshold"] = f"teach.threshold {teach.threshold:g} closed the gate on "
            out["teach.threshold"] += "every token: no inner update could fire"
        return out


class HopeAttention(_Hope, MemoryLM):
    def __init__(self, cfg: HopeAttentionConfig, vocab_size: int, cms, teach: TeachConfig):
        MemoryLM.__init__(self, cfg, vocab_size, [Block(cfg) for _ in range(cfg.n_layers)], 0)
        self.state_names = ()
        self._hope_init(cfg, cms, teach)

    body = AttentionLM.body  # plain blocks, nothing carried but the chain's state


class Hope(_Hope, MemoryLM):
    def __init__(self, cfg: HopeConfig, vocab_size: int, cms, teach: TeachConfig):
        blocks = [MemoryBlock(cfg) for _ in range(cfg.n_layers)]
        MemoryLM.__init__(self, cfg, vocab_size, blocks, memory_state_size(cfg))
        self.state_names = memory_state_names(cfg.n_layers, cfg)
        self._hope_init(cfg, cms, teach)
