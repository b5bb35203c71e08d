"""The checks of the contract test kit (`nlsweep.testing`), one function each.

Each check raises `KindCheckError` with one line saying what broke; `check_kind` runs them
all and returns {check: message} for the ones that failed (empty: the kind keeps the
contract).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable

import torch

import models.kinds  # noqa: F401 - the built-in kinds
from models.capabilities import build_model, member_of
from models.common import check_ownership
from models.registry import model_kind
from nlsweep.data.config import DataConfig
from nlsweep.data.load import load_corpus
from nlsweep.training import checkpoint
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

SMALL = {"d_model": 16, "d_ff": 32, "n_layers": 1, "n_heads": 2, "memory_chunk": 4}
"""Width fields shrunk where a kind's config has them (the kit's trials stay tiny)."""
TIMING = ("perf/",)
TOLERANCE = 1e-5


class KindCheckError(AssertionError):
    """A contract check that failed; the message is one line."""


def trial_for(kind: str, model: dict | None = None, steps: int = 8, periods: bool = True,
              state: str | None = None) -> TrialConfig:  # fmt: skip
    """A tiny trial of `kind`: its config's width fields shrunk, `model` overrides on top,
    distinct CMS periods 1, 2, 4, ... for its levels, persistent state where it carries
    state, token periods for the kinds that learn in context."""
    entry = model_kind(kind)
    names = {f.name for f in dataclasses.fields(entry.config_cls)}
    raw_model = {"kind": kind, **{k: v for k, v in SMALL.items() if k in names}, **(model or {})}
    levels = member_of(entry.model_cls, "levels", ("fast",))
    cms: dict = {"periods": {lv: 2**i for i, lv in enumerate(levels)}} if periods else {}
    if member_of(entry.model_cls, "uses_targets", False):
        cms["token_periods"] = [1, 4]
    carries = member_of(entry.model_cls, "carries_state", False)
    raw = {
        "model": raw_model,
        "cms": cms,
        "optim": {"kind": "adam", "lr": 3e-3},
        "state": {"mode": state or ("persistent" if carries else "reset")},
        "data": {"corpus": "pydoc", "seq_len": 8, "batch_size": 2},
        "train": {"steps": steps, "eval_every": 2, "eval_batches": 1, "seed": 1,
                  "threads": 1, "final_eval": "sampled"},
    }  # fmt: skip
    return TrialConfig.from_dict(raw)


_CORPUS = None


def _trainer(cfg: TrialConfig) -> Trainer:
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = load_corpus(DataConfig(corpus="pydoc"))
    return Trainer(cfg, device=torch.device("cpu"), corpus=_CORPUS)


def _logits(model, ids: torch.Tensor, state=None):
    kw = {"targets": torch.roll(ids, -1, 1)} if getattr(model, "uses_targets", False) else {}
    out = model(ids, state, **kw)
    return out if isinstance(out, tuple) else (out, None)


def check_ownership_of(kind: str, model: dict | None = None) -> None:
    cfg = trial_for(kind, model)
    entry = model_kind(kind)
    net = build_model(entry, cfg.model, 32, cfg.cms, cfg.teach)
    try:
        check_ownership(net, net.level_parameters())
    except ValueError as e:
        raise KindCheckError(f"{kind}: {e}") from None


def check_exact_resume(kind: str, model: dict | None = None) -> None:
    cfg = trial_for(kind, model)
    straight = _trainer(cfg)
    full = list(straight.run())
    first = _trainer(cfg)
    before = []
    for m in first.run():
        before.append(m)
        if first.step == 4:
            break
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save(first, folder)
        torch.manual_seed(999)  # what another trial in the same worker would leave behind
        second = _trainer(cfg)
        checkpoint.restore(second, folder)
    after = list(second.run())

    def plain(history):
        return [{k: v for k, v in m.items() if not k.startswith(TIMING)} for m in history]

    if plain(before + after) != plain(full):
        raise KindCheckError(f"{kind}: metrics after checkpoint -> restore -> continue differ "
                             "from the run that never stopped")  # fmt: skip
    for (k, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        if not torch.equal(a, b):
            raise KindCheckError(f"{kind}: weight {k} differs after checkpoint -> restore")


def check_rows_independent(kind: str, model: dict | None = None) -> None:
    t = _trainer(trial_for(kind, model))
    net = t.model.eval()
    g = torch.Generator().manual_seed(0)
    vocab = len(t.corpus.vocab)
    ids = torch.randint(0, vocab, (3, 8), generator=g)
    with torch.no_grad():
        together, _ = _logits(net, ids)
        alone, _ = _logits(net, ids[1:2])
        other = ids.clone()
        other[0] = torch.randint(0, vocab, (8,), generator=g)
        changed, _ = _logits(net, other)
    if not torch.allclose(together[1:2], alone, atol=TOLERANCE, rtol=0):
        raise KindCheckError(f"{kind}: row 1's logits change with the other rows of its batch")
    if not torch.allclose(together[1:], changed[1:], atol=TOLERANCE, rtol=0):
        raise KindCheckError(f"{kind}: row 1's logits change when row 0's tokens change")


def check_state_split(kind: str, model: dict | None = None) -> None:
    t = _trainer(trial_for(kind, model))
    net = t.model.eval()
    if not getattr(net, "carries_state", False) or not getattr(net, "state_is_context", True):
        return  # stateless, or attention that sees one call (declared: state_is_context)
    ids = torch.randint(0, len(t.corpus.vocab), (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = _logits(net, ids)  # None: a fresh state
        for cut in (4, 8, 12):
            first, state = _logits(net, ids[:, :cut])
            second, _ = _logits(net, ids[:, cut:], state)
            if not torch.allclose(torch.cat([first, second], 1), whole, atol=TOLERANCE, rtol=0):
                raise KindCheckError(f"{kind}: a stream split at token {cut}, state carried, "
                                     "differs from one pass")  # fmt: skip


def check_cms_periods(kind: str, model: dict | None = None) -> None:
    cfg = trial_for(kind, model)
    t = _trainer(cfg)
    groups = t.model.level_parameters()
    if len(groups) < 2:
        return
    periods = cfg.cms.periods
    for step in range(1, 9):
        before = {lv: [p.detach().clone() for p in ps] for lv, ps in groups.items()}
        t.train_step()
        for level, params in groups.items():
            moved = any(not torch.equal(a, p) for a, p in zip(before[level], params))
            due = step % periods[level] == 0
            if moved != due:
                said = "changed" if moved else "did not change"
                raise KindCheckError(f"{kind}: level {level} (period {periods[level]}) {said} "
                                     f"at step {step}")  # fmt: skip


CHECKS: dict[str, Callable] = {
    "ownership": check_ownership_of,
    "exact_resume": check_exact_resume,
    "rows_independent": check_rows_independent,
    "state_split": check_state_split,
    "cms_periods": check_cms_periods,
}


def check_kind(kind: str, model: dict | None = None, checks=None) -> dict[str, str]:
    """Run the kit's checks (all, or the named ones) on a registered kind, with `model`
    overrides of its config; {check: one-line failure} for those that failed."""
    failures = {}
    for name in checks or CHECKS:
        try:
            CHECKS[name](kind, model)
        except KindCheckError as e:
            failures[name] = str(e)
        except Exception as e:  # noqa: BLE001 - a kind that cannot even run the check
            line = (str(e).splitlines() or [""])[0]
            failures[name] = f"{kind}: {type(e).__name__}: {line}"
    return failures


__all__ = ["CHECKS", "KindCheckError", "check_kind", "trial_for"]
