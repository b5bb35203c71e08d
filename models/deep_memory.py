"""A Titans memory whose momentum is a deep momentum memory (`model.memory_optimizer:
deep_momentum`): the Nested Learning paper's DMGD as the memory's own inner optimizer.

Notation (models/titans_memory.py defines the memory, models/deep_momentum.py the momentum
memory m_phi; per batch row and head, per token t; j runs over the memory's weights)
    g_tj    = grad_(W_j) l_t(W_c(t))          the token's gradient, at its chunk's start memory
    r_t     = theta_t, scaled down by the write bound          the token's write rate
    phi_tj  = phi_0j + eta_t (phi_(t-1)j - phi_0j) - r_t grad L2(phi_(t-1)j; g_tj)
    S_tj    = -m_(phi_tj)(g_tj)
    W_tj    = (1 - alpha_t) W_(t-1)j + S_tj    (memory_forget_to init: W - W_0 on both sides)
    y_t     = M_(W_t)(q_t) W_O
The momentum gate eta_t is the momentum memory's retention and the write rate its step size,
so with its key layer at zero the read is B_tj = eta_t B_(t-1)j + r_t g_tj and this is the
Titans memory exactly (tested against it).
Why a loop over tokens: the read m_phi(g) is not linear in the gradients, so the closed form
of a chunk (`models/titans_scan.py`: a read as an attention-like product over the chunk's
gradients) does not exist; every token's W_t is formed, rows x cols per weight, the cost the
dual form avoids. It is for ablations at small widths.
Update frequencies: phi (B, A1, A2 of each weight) is inner state like W and S, written at
every token, carried or reset with them; A1's starting point phi_0 is a fixed random draw
(a buffer). State: the memory's (W, S, W_c, position) with S = -B, then each weight's A1 and
A2. `deep_share` (the deep part's share of the last token's read, per call) proves it acted.
"""

from __future__ import annotations

import torch

from models.deep_momentum import deep_momentum_step, init_keys
from models.titans_memory import MemoryConfig, NeuralMemory


class DeepMomentumMemory(NeuralMemory):
    def __init__(self, d_model: int, cfg: MemoryConfig):
        super().__init__(d_model, cfg)
        self.hidden = cfg.memory_deep_hidden
        for j, (_, c) in enumerate(self.shapes):
            self.register_buffer(f"deep_keys{j}", init_keys(self.hidden, c))
        self.register_buffer("deep_share", torch.zeros(()))

    def init_state(self, batch: int):
        """The memory's state, then A1 (batch, heads * h, cols) and A2 (batch, heads * cols,
        h) of each weight, so that `_by_head` splits them as it splits the weights."""
        a1s, a2s = [], []
        for j, (_, c) in enumerate(self.shapes):
            keys = getattr(self, f"deep_keys{j}").to(self.init_weights[j].dtype)
            a1s.append(keys.repeat(self.heads, 1).expand(batch, -1, -1))
            a2s.append(keys.new_zeros(batch, self.heads * c, self.hidden))
        return (*super().init_state(batch), *a1s, *a2s)

    def forward(self, x: torch.Tensor, state=None):
        B, T, _ = x.shape
        state = self.init_state(B) if state is None else state
        n = len(self.shapes)
        ws, ss, cs, pos = self._split(B, state[: 3 * n + 1])
        a1s, a2s = ([self._by_head(a) for a in state[3 * n + 1 + i * n :][:n]] for i in (0, 1))
        k, v, q, theta, eta, alpha = self._inputs(x)
        R = k.shape[0]
        anchors = self._anchors(R)
        with torch.no_grad():
            k_norm = torch.linalg.vector_norm(k, dim=-1)
        keys0 = [getattr(self, f"deep_keys{j}").to(x.dtype) for j in range(n)]
        ys, sizes, shares = [], [], []
        for t in range(T):
            fs = self.factors(cs, k[:, t : t + 1], v[:, t : t + 1])  # at the chunk's start
            size = self.write_size(fs, k_norm[:, t : t + 1], theta[:, t : t + 1])
            rate = self._rate(theta[:, t : t + 1], size).view(R, 1, 1)
            mu, a = eta[:, t].view(R, 1, 1), alpha[:, t].view(R, 1, 1)
            shares = []
            for j, ((X, Y), w0) in enumerate(zip(fs, anchors)):
                g = X.transpose(-1, -2) @ Y  # (R, rows, cols): the token's gradient
                read, b, a1s[j], a2s[j], share = deep_momentum_step(
                    g, -ss[j], a1s[j], a2s[j], keys0[j], mu, rate
                )
                ss[j] = -b
                shares.append(share)
                ws[j] = (1 - a) * ws[j] - read + (0 if w0 is None else a * w0)
            ys.append(self.read(ws, q[:, t : t + 1]))
            sizes.append(size)
            pos = (pos + 1) % self.cfg.memory_chunk
            if pos == 0:
                cs = list(ws)  # a copy: ws's entries are replaced token by token
        self._record(B * T, sizes, ws, ss, (v, theta, eta, alpha))
        if self.training and self.write_scale:
            self.deep_share.copy_(torch.stack(shares).mean().detach())
        y = self.out(self._from_heads(torch.cat(ys, dim=1)))
        rows = lambda ts: (t.reshape(B, -1, t.shape[-1]) for t in ts)  # noqa: E731
        return y, (*self._state(ws, ss, cs, pos), *rows(a1s), *rows(a2s))

    def scan(self, B: int, T: int, segment: int, inputs, state=None):
        raise NotImplementedError("deep_momentum reads its memory token by token (no MAC)")

    @property
    def diagnostics(self) -> dict[str, torch.Tensor]:
        out = super().diagnostics
        return {**out, "deep_share": self.deep_share.clone()} if out else out
