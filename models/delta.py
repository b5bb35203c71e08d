"""Delta-rule optimizers (Nested Learning, eq. 29): gradient descent with an L2 inner objective.

Notation
    W_t      a covered weight matrix (d_out, d_in): every nn.Linear weight, and the LSTM's
             input-to-hidden weight, of the modules the optimizer is given
    X        (N, d_in) the inputs that matrix saw since its level last stepped (N rows =
             tokens x accumulated steps), kept as a running X^T X and N
    G_t      gradient of the (accumulated) loss w.r.t. W_t
    D_t      delta_sgd:  G_t, or with momentum mu: v <- mu v + G_t, D_t = v
             delta_adam: m <- b1 m + (1-b1) G_t, v <- b2 v + (1-b2) G_t^2,
                         D_t = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    W_{t+1} = W_t - alpha W_t (X^T X / N) - lr D_t          (both terms use W_t)
Parameters that are not covered matrices (biases, norms, embeddings, the LSTM's
hidden-to-hidden weight, whose inputs are internal) get the plain update W - lr D_t.
With alpha > 0, an optimizer that covers no matrix raises when it is built, and a covered
matrix that captured no input raises when it steps: an earlier reproduction's "delta rule"
silently ran as plain Adam because inputs were never captured (pitfall 3).
The input statistics live in the optimizer's per-parameter state, so they checkpoint with it.
A forward pass adds its inputs to a pending X^T X first; `flush_inputs(reduce)` moves them into
the state, summed over data-parallel workers when `reduce` is given, so every replica decays
with the whole global batch's statistics (a level's own step flushes too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def covered_matrices(modules: Iterable[nn.Module]) -> list[tuple[nn.Module, nn.Parameter]]:
    """(module, weight) pairs whose inputs a forward hook can see."""
    out = []
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.Linear):
                out.append((sub, sub.weight))
            elif isinstance(sub, nn.LSTM):
                if sub.num_layers != 1:
                    raise ValueError("delta rule: only single-layer LSTMs expose their inputs")
                out.append((sub, sub.weight_ih_l0))
    return out


class DeltaRule(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        modules: Iterable[nn.Module],
        *,
        kind: str,
        lr: float,
        decay_rate: float,
        momentum: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if kind not in ("sgd", "adam"):
            raise ValueError(f"delta rule kind must be sgd or adam, got {kind!r}")
        defaults = dict(lr=lr, decay_rate=decay_rate, momentum=momentum, betas=betas, eps=eps)
        super().__init__(params, defaults)
        self.kind = kind
        owned = {id(p) for g in self.param_groups for p in g["params"]}
        pairs = [(mod, w) for mod, w in covered_matrices(modules) if id(w) in owned]
        self.covered = {id(w): w for _, w in pairs}
        if decay_rate > 0 and not self.covered:
            # the decay would apply to nothing: the optimizer would be its plain base
            raise ValueError(
                f"delta rule: decay_rate {decay_rate} but none of its parameters is a covered "
                "matrix (an nn.Linear or single-layer LSTM input weight of the given modules); "
                "refusing to run as the plain optimizer"
            )
        self._hooks = [mod.register_forward_pre_hook(self._capture(w)) for mod, w in pairs]
        self._pending: dict[int, list] = {}  # id(W) -> [X^T X, N] since the last flush
        self.last_decay_norm = 0.0

    def _capture(self, weight: nn.Parameter):
        def hook(module, args):
            # Only training forwards count: evaluation must not move the statistics.
            if not (module.training and torch.is_grad_enabled()):
                return
            x = args[0].detach().reshape(-1, weight.shape[1]).to(weight.dtype)
            pending = self._pending.setdefault(id(weight), self._empty(weight))
            pending[0].add_(x.T @ x)
            pending[1] += x.shape[0]

        return hook

    @staticmethod
    def _empty(weight: torch.Tensor) -> list:
        return [weight.new_zeros(weight.shape[1], weight.shape[1]), 0]

    @torch.no_grad()
    def flush_inputs(self, reduce: Callable[[list[torch.Tensor]], None] | None = None) -> None:
        """Move the pending input statistics into the state; `reduce` sums a list of tensors
        in place over the data-parallel workers (every worker must flush at the same step)."""
        if reduce is not None and self.covered:
            # every matrix, in one order on every worker (one that saw no input adds zeros)
            pending = [self._pending.setdefault(i, self._empty(w)) for i, w in self.covered.items()]
            counts = torch.tensor([float(n) for _, n in pending], dtype=torch.float64,
                                  device=pending[0][0].device)  # fmt: skip
            reduce([*(xtx for xtx, _ in pending), counts])
            for entry, n in zip(pending, counts.tolist()):
                entry[1] = int(n)
        for i, (xtx, n) in self._pending.items():
            if not n:
                continue
            st = self.state[self.covered[i]]
            if "xtx" not in st:
                st["xtx"], st["n"] = torch.zeros_like(xtx), 0
            st["xtx"].add_(xtx)
            st["n"] += n
        self._pending.clear()

    def _direction(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        g, st = p.grad, self.state[p]
        if self.kind == "sgd":
            if group["momentum"] == 0:
                return g
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.detach().clone()
            else:
                buf.mul_(group["momentum"]).add_(g)
            return buf
        b1, b2 = group["betas"]
        if "exp_avg" not in st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["step"] += 1
        t = st["step"]
        st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = st["exp_avg"] / (1 - b1**t)
        v_hat = st["exp_avg_sq"] / (1 - b2**t)
        return m_hat / (v_hat.sqrt() + group["eps"])

    @torch.no_grad()
    def step(self, closure=None):
        self.flush_inputs()
        sq = 0.0
        for group in self.param_groups:
            alpha = group["decay_rate"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = self._direction(p, group)
                st = self.state[p]
                if id(p) in self.covered and alpha > 0:
                    if not st.get("n"):
                        raise RuntimeError(
                            f"delta rule: decay_rate {alpha} but no inputs were captured for a "
                            f"{tuple(p.shape)} matrix since its last step; refusing to fall "
                            "back to the plain update"
                        )
                    decay = alpha * (p @ (st["xtx"] / st["n"]))  # uses W_t, before the update
                    sq += float(decay.pow(2).sum())
                    p.sub_(decay).sub_(d, alpha=group["lr"])
                else:
                    p.sub_(d, alpha=group["lr"])
                if "xtx" in st:
                    st["xtx"].zero_()
                    st["n"] = 0
        self.last_decay_norm = math.sqrt(sq)

    # The last step's decay norm is reported until the next step, so it checkpoints too.
    def state_dict(self) -> dict:
        return {**super().state_dict(), "last_decay_norm": self.last_decay_norm}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.last_decay_norm = float(state_dict.pop("last_decay_norm", 0.0))
        super().load_state_dict(state_dict)

    def metrics(self) -> dict[str, float]:
        return {"decay_norm": self.last_decay_norm, "delta_matrices": float(len(self.covered))}
