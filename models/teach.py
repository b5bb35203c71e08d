"""The teach signal: the error at the LM head's input, which drives HOPE's in-context updates.

Notation (shared notes §1)
    h_t       head input (B, T, d);  logits_t = W_head h_t + b;  p_t = softmax(logits_t)
    l_t       = -log p_t[y_t], the token's own cross-entropy (0 at ignored positions)
    e_t       = dl_t/dh_t = (p_t - onehot(y_t)) W_head        the token's own error
    N         positions whose target is not ignored (N_active)
    delta_t   = e_t / N = dL/dh_t for L = mean cross-entropy over the N active positions
    s(i)      runtime scale at outer step i: `scale` x linear warmup over `warmup_steps`,
              then linear decay to 0 from `decay_start` over `decay_steps`
    e'_t      = gate_t clip_c(s(i) e_t)   per-token norm clip to `clip` (0: off)
    gate_t    = ||e_t|| >= `threshold`    (0: every token passes)
HOPE's in-context updates are driven by e'_t, the token's own error: it depends on the token
and its prefix only, never on the batch size, on other rows or on which later positions are
ignored (a signal divided by the batch's N would make a sequence's in-context step size depend
on all of those). Clip and threshold act on e_t, whose norm is O(1). Logged per evaluation:
mean ||e_t|| over the active tokens before and after scaling (and clipping), clip rate and
gate hit rate among them. A token whose gate is closed makes no inner update. Step counts
given as fractions in (0, 1) are fractions of the run's steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.common import require

IGNORE = -100
"""Target id of positions the loss skips (`F.cross_entropy`'s default ignore_index)."""


@dataclass
class TeachConfig:
    """`teach:` section (models hope and hope_attention)."""

    scale: float = 1.0
    """Multiplier of the teach signal, hence of every inner update (0: inner updates off)."""
    warmup_steps: float = 0
    """Outer steps (or a fraction of the run) over which the scale ramps from 0 up."""
    decay_start: float = 0
    """Outer step (or fraction) at which the scale starts decaying linearly to 0 (0: never)."""
    decay_steps: float = 0
    """Outer steps (or fraction) the decay to 0 takes."""
    clip: float = 0.0
    """Largest norm of one token's scaled error s e_t (0: no clip)."""
    threshold: float = 0.0
    """Tokens whose error norm ||e_t|| is below this make no inner update (0: all do)."""

    def __post_init__(self):
        require(self.scale >= 0, "scale", f">= 0, got {self.scale}")
        for key in ("warmup_steps", "decay_start", "decay_steps"):
            v = getattr(self, key)
            require(v >= 0, key, f"a step count or a fraction of the run in (0, 1), got {v}")
        require(
            not self.decay_start or self.decay_steps > 0,
            "decay_steps",
            "positive when decay_start is set",
        )
        require(self.clip >= 0, "clip", f">= 0 (0: off), got {self.clip}")
        require(self.threshold >= 0, "threshold", f">= 0 (0: off), got {self.threshold}")

    def steps(self, value: float, total: int) -> float:
        return value * total if 0 < value < 1 else value

    def scale_at(self, step: int, total: int) -> float:
        """s(i) for outer step `step` (0-based) of a run of `total` steps."""
        s = self.scale
        warm = self.steps(self.warmup_steps, total)
        if warm and step < warm:
            s *= (step + 1) / warm
        start = self.steps(self.decay_start, total)
        if start and step >= start:
            s *= max(0.0, 1.0 - (step - start) / self.steps(self.decay_steps, total))
        return s


def token_error(
    logits: torch.Tensor, targets: torch.Tensor, head_weight: torch.Tensor
) -> torch.Tensor:
    """e_t = (softmax(logits_t) - onehot(y_t)) W_head, zero where y_t is ignored: the gradient
    of the token's own cross-entropy at the head input (in the dtype of `logits`' compute)."""
    active = targets != IGNORE
    # float32 at least (bf16 logits), float64 when the model is
    p = F.softmax(logits.detach().to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    # p - onehot(y) as p with 1 taken off at y: one_hot reads the targets' range on the host
    # at every call (a sync per segment of the CMS chain)
    off = -active.unsqueeze(-1).to(p.dtype)  # ignored positions take nothing off
    err = p.scatter_add(-1, targets.clamp(min=0).unsqueeze(-1), off) * active.unsqueeze(-1)
    return err @ head_weight.detach().to(p.dtype)


def teach_signal(
    h: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, head_weight: torch.Tensor
) -> torch.Tensor:
    """delta = e_t / N_active = dL/dh for the batch's mean cross-entropy."""
    n = (targets != IGNORE).sum().clamp(min=1)
    return (token_error(logits, targets, head_weight) / n).to(h.dtype)


def shape_signal(err: torch.Tensor, scale: float, cfg: TeachConfig, active: torch.Tensor):
    """Scale, clip and gate the per-token errors e_t (B, n, d) of the `active` positions;
    returns e'_t and its statistics over the active positions (tensors)."""
    raw = err.norm(dim=-1)
    out = err * scale
    n = active.sum().clamp(min=1)
    zero, one = torch.zeros((), device=err.device), torch.ones((), device=err.device)
    stats = {"norm": raw.sum() / n, "clip_rate": zero, "gate_rate": one}
    if cfg.clip:
        norm = out.norm(dim=-1, keepdim=True)
        clipped = norm > cfg.clip
        out = torch.where(clipped, out * (cfg.clip / norm.clamp(min=1e-30)), out)
        stats["clip_rate"] = (clipped.squeeze(-1) & active).sum() / n
    if cfg.threshold:
        gate = raw >= cfg.threshold
        out = out * gate.unsqueeze(-1)
        stats["gate_rate"] = (gate & active).sum() / n
    stats["scaled_norm"] = out.norm(dim=-1).sum() / n
    return out, stats
