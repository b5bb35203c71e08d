"""Deep momentum (Nested Learning, "optimizers as associative memories", DMGD): the momentum
of an inner update is itself a memory, an MLP trained in context by gradient descent on the
momentum's own objective.

Notation (one inner weight W of shape (r, c), batched over rows of the batch)
    u_k        the k-th inner gradient of W (its level's summed gradient, shape (r, c))
    classic momentum, as an associative memory with the dot-product objective:
        M_k = argmin_M <M, -u_k> + ||M - mu M_(k-1)||^2 / 2   =>   M_k = mu M_(k-1) + u_k
        W <- W - lr M_k
    deep momentum: the memory is phi = (B, A1, A2), read at the gradient's rows
        key_j      = u_(k, j) / ||u_(k, j)||                   (row j of u_k, unit length)
        s(u)       = tanh(key A1^T)                             (r, h)
        m_phi(u)   = B + s(u) A2^T / h                          (r, c)
        L2(phi; u) = -<m_phi(u), u>                             (the dot-product objective)
        phi_k      = phi_0 + mu (phi_(k-1) - phi_0) - eta grad_phi L2(phi_(k-1); u_k)
        W <- W - lr m_(phi_k)(u_k)
    with the gradients of the objective in closed form (s, A1, A2 taken at phi_(k-1)):
        grad_B  = -u
        grad_A2 = -u^T s / h
        grad_A1 = -((u A2 / h) * (1 - s^2))^T key
    phi_0 = (0, A1_0, 0); A1_0 is a fixed random draw (a buffer of the model, N(0, 1)).
Update frequency: phi steps once per inner step of its weight (every C_l tokens for a CMS
level); it is inner state, per batch row, carried or reset with the rest of that state.
Why this form: with the memory's input layer at zero (A1 = A1_0 = 0) s is 0, the deep part
reads 0, and with eta = 1 the rule is exactly classic momentum (tested); with A1_0 != 0 the
read is B plus sum_k mu^(K-k) eta <s(u), s(u_k)>/h u_k over past gradient rows: a momentum
that weighs each past gradient row by how much its key resembles the current one. Keys are
unit rows so that this weight does not grow with the gradient's scale; the forgetting pulls
phi back to phi_0 rather than to 0, so that the key map does not fade away with time.
`deep_share` (||s A2^T / h|| / ||m||, last step) proves that the deep part acts.
"""

from __future__ import annotations

import torch

from models.common import require


def check_choice(key: str, choice: str, hidden_key: str, hidden: int) -> bool:
    """The refusals shared by the config fields that choose an inner optimizer (`key`) and
    size its momentum memory (`hidden_key`); whether deep momentum is chosen."""
    require(
        choice in ("momentum", "deep_momentum"), key, f"momentum or deep_momentum, got {choice!r}"
    )
    deep = choice == "deep_momentum"
    require(
        (hidden >= 1) == deep,
        hidden_key,
        f"a positive number of hidden units with {key} deep_momentum, and unset otherwise, "
        f"got {hidden}",
    )
    return deep


def init_keys(h: int, c: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A1_0: the memory's initial input layer, (h, c)."""
    return torch.randn(h, c, generator=generator)


def deep_momentum_step(
    u: torch.Tensor,
    b: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    a1_0: torch.Tensor,
    mu: float | torch.Tensor,
    eta: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the memory on gradients u (n, r, c) from phi = (b (n, r, c), a1 (n, h, c),
    a2 (n, c, h)); returns (m_(phi_k)(u), b', a1', a2', the deep part's share of the read
    per row (n,))."""
    h = a1.shape[-2]
    key = _key(u)
    s = torch.tanh(key @ a1.transpose(-1, -2))  # (n, r, h) at phi_(k-1)
    ua2 = (u @ a2) / h  # (n, r, h)
    g_a1 = ((ua2 * (1 - s * s)).transpose(-1, -2)) @ key  # -grad_A1
    g_a2 = (u.transpose(-1, -2) @ s) / h  # -grad_A2
    numbers = isinstance(mu, (int, float)) and isinstance(eta, (int, float))
    # (per-row tensors mu, eta for the Titans memory, whose gates are per token)
    b = torch.add(u, b, alpha=mu) if numbers and eta == 1 else mu * b + eta * u
    a2 = mu * a2 + eta * g_a2
    a1 = a1_0 + mu * (a1 - a1_0) + eta * g_a1
    deep = _deep_part(key, a1, a2)
    read = b + deep
    share = deep.flatten(1).norm(dim=1) / read.flatten(1).norm(dim=1).clamp_min(1e-30)
    return read, b, a1, a2, share


def _key(u: torch.Tensor) -> torch.Tensor:
    """The gradient's rows at unit length (a zero row stays zero)."""
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _deep_part(key: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """tanh(key A1^T) A2^T / h: the read of the memory beyond its constant part B."""
    return torch.tanh(key @ a1.transpose(-1, -2)) @ a2.transpose(-1, -2) / a1.shape[-2]


def objective(u, b, a1, a2) -> torch.Tensor:
    """L2(phi; u) = -<m_phi(u), u>, summed over the batch (for checks against autograd)."""
    return -((b + _deep_part(_key(u), a1, a2)) * u).sum()
