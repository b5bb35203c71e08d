"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") as an nlsweep
optimizer plugin: `optim: {kind: lion, lr, beta1, beta2, weight_decay}`.

Notation
    g       gradient of a parameter theta;  m: its momentum (zero at the start)
    c       = beta1 m + (1 - beta1) g            the update direction before its sign
    theta  <- theta - lr (sign(c) + wd theta)    every step of the level it belongs to
    m      <- beta2 m + (1 - beta2) g
"""

import torch

from models.optim import register_optimizer


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                c = beta1 * m + (1 - beta1) * p.grad
                p.add_(torch.sign(c) + group["weight_decay"] * p, alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


@register_optimizer("lion")
def build(params, cfg, lr, modules):
    return Lion(params, lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
