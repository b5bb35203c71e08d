"""The contract test kit: every registered kind passes it, and a deliberately broken toy kind
fails exactly the check it breaks (so no check is vacuous)."""

from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from torch import nn

import models.kinds  # noqa: F401 - the built-ins
from models import register_model
from models.registry import model_kinds
from nlsweep.testing import CHECKS, check_kind


@pytest.mark.parametrize("kind", sorted(model_kinds()))
def test_every_registered_kind_keeps_the_contract(kind):
    assert check_kind(kind) == {}


@dataclass
class ToyConfig:
    kind: Literal["toy"] = "toy"
    d_model: int = 8


class Toy(nn.Module):
    """A correct two-level recurrent toy (a GRU and a slow head), which the broken kinds
    below each break in one place."""

    levels = ("fast", "slow")
    carries_state = True
    state_batch_dim = 1
    state_names = ("h",)

    def __init__(self, cfg, vocab_size):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.rnn = nn.GRU(cfg.d_model, cfg.d_model, batch_first=True)
        self.head = nn.Linear(cfg.d_model, vocab_size)

    def level_modules(self):
        return {"fast": [self.embed, self.rnn], "slow": [self.head]}

    def level_parameters(self):
        return {
            lv: [p for m in ms for p in m.parameters()] for lv, ms in self.level_modules().items()
        }

    def init_state(self, batch_size, device="cpu"):
        return (torch.zeros(1, batch_size, self.embed.embedding_dim, device=device),)

    def forward(self, ids, state=None):
        y, h = self.rnn(self.embed(ids), None if state is None else state[0])
        return self.head(y), (h,)


class Orphan(Toy):
    """Breaks ownership: the head's bias belongs to no level."""

    def level_parameters(self):
        groups = super().level_parameters()
        groups["slow"] = [self.head.weight]
        return groups


class Leaky(Toy):
    """Breaks row independence: every row sees the batch's mean embedding."""

    def forward(self, ids, state=None):
        e = self.embed(ids)
        y, h = self.rnn(e + e.mean(0, keepdim=True), None if state is None else state[0])
        return self.head(y), (h,)


class Forgetful(Toy):
    """Breaks exact resume: a count of training calls, kept outside the training state,
    shifts the logits."""

    def __init__(self, cfg, vocab_size):
        super().__init__(cfg, vocab_size)
        self.calls = 0

    def forward(self, ids, state=None):
        self.calls += self.training
        logits, h = super().forward(ids, state)
        return logits + 1e-3 * self.calls, h


class Amnesic(Toy):
    """Breaks the state split: it carries the state back out but never reads it."""

    def forward(self, ids, state=None):
        return super().forward(ids, None)


class Restless(Toy):
    """Breaks CMS periods: its slow level's bias moves at every forward, off the clock."""

    def forward(self, ids, state=None):
        if self.training:
            with torch.no_grad():
                self.head.bias.add_(1e-3)
        return super().forward(ids, state)


BROKEN = {"orphan": (Orphan, "ownership"), "leaky": (Leaky, "rows_independent"),
          "forgetful": (Forgetful, "exact_resume"), "amnesic": (Amnesic, "state_split"),
          "restless": (Restless, "cms_periods")}  # fmt: skip


@pytest.fixture(scope="module")
def toys():
    from models import registry

    kinds = {}
    for name, (cls, _) in {"toy": (Toy, None), **BROKEN}.items():
        config = dataclass(type(f"{cls.__name__}Config", (ToyConfig,), {
            "__annotations__": {"kind": Literal[name]}, "kind": name}))  # fmt: skip
        register_model(name, config, cls)
        kinds[name] = cls
    yield kinds
    for name in kinds:
        registry._KINDS.pop(name, None)


def test_the_correct_toy_passes(toys):
    assert check_kind("toy") == {}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_toy_fails_the_check_it_breaks(toys, name):
    broken = BROKEN[name][1]
    failures = check_kind(name)
    assert broken in failures, failures
    assert failures[broken].startswith(f"{name}: ") and "\n" not in failures[broken]
    if broken != "ownership":  # an orphan parameter also stops the trainer that others build
        assert set(failures) == {broken}, failures


def test_the_kit_names_its_checks():
    assert set(CHECKS) == {"ownership", "exact_resume", "rows_independent", "state_split",
                           "cms_periods"}  # fmt: skip
