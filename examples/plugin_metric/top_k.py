"""An evaluator plugin: top-k accuracy of the next token on the held-out windows, at every
evaluation. `train: {evaluators: {top_k: {k: 5}}}` reports `val/top5_acc`, which the
evaluator declares (higher is better), so a spec may name it as its `metric`.

    acc_k = #{targets t : t among the k largest logits at its position} / #targets

It reads the model's predictions through `ctx.predictions()`, which scores with the
evaluation's own recurrent state and never touches the training state.
"""

from dataclasses import dataclass

from models import ConfigError
from nlsweep import register_evaluator


@dataclass
class TopKOptions:
    k: int = 5

    def __post_init__(self):
        if not 1 <= self.k <= 1000:
            raise ConfigError("k", f"in [1, 1000], got {self.k}")


def top_k_metrics(cfg):
    """The metric's name follows the option: k = 5 reports val/top5_acc."""
    return {f"val/top{cfg.options.k}_acc": "max"}


@register_evaluator("top_k", metrics=top_k_metrics, options=TopKOptions)
def top_k(ctx):
    k = ctx.options.k
    hits = count = 0
    for logits, targets in ctx.predictions():
        scored = targets != ctx.IGNORE  # padding of the last row of a whole-split pass
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        hits += int((top == targets.unsqueeze(-1)).any(-1)[scored].sum())
        count += int(scored.sum())
    return {f"val/top{k}_acc": hits / max(count, 1)}
