"""`train.final_eval_tokens`: the final evaluation scores a token budget spread over the B
rows of the whole-split layout, exactly the prefix of each row that the full evaluation
scores first, and says so; a budget the split does not exceed scores all of it."""

import math

import pytest
import torch

from models.errors import ConfigError
from nlsweep.training import Trainer, TrialConfig

TEXT = "".join(f"line {i}: the tide turns over the reef and the gull cries\n" for i in range(300))


def trainer(tmp_path, budget: int, **train) -> Trainer:
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    raw = {
        "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24},
        "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
        "optim": {"kind": "adam", "lr": 3e-3},
        "state": {"mode": "persistent"},
        "data": {"corpus": "text", "path": str(path), "seq_len": 8, "batch_size": 3},
        "train": {"steps": 4, "eval_every": 2, "eval_batches": 2, "seed": 0, "threads": 1,
                  "final_eval_tokens": budget, **train},
    }  # fmt: skip
    return Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"))


def test_a_budget_scores_the_first_columns_of_every_row(tmp_path):
    t = trainer(tmp_path, 100)
    last = list(t.run())[-1]
    cols = math.ceil(100 / 3)
    assert last["eval/full_split"] == 0.0 and last["eval/final_budget_columns"] == cols
    assert last["data/val_tokens"] == 3 * cols
    # the same numbers as the whole-split windows cut at `cols` columns, scored by hand
    full = list(t.heldout.full_windows())
    x = torch.cat([a for a, _ in full], 1)[:, :cols]
    y = torch.cat([b for _, b in full], 1)[:, :cols]
    t.evaluate([(x[:, c : c + 8], y[:, c : c + 8]) for c in range(0, cols, 8)])
    assert last["val/loss"] == pytest.approx(t.eval_nats / t.eval_tokens, rel=1e-9)
    per_target = torch.cat([b for _, b in t.heldout_units["bytes"].full_windows()], 1)
    units = int(per_target[:, :cols].clamp(min=0).sum())  # padding (-100) counts nothing
    assert last["val/bpb"] == pytest.approx(t.eval_nats / math.log(2) / units, rel=1e-9)


def test_a_budget_the_split_does_not_exceed_scores_it_whole(tmp_path):
    t = trainer(tmp_path, 10**9)
    last = list(t.run())[-1]
    assert last["eval/full_split"] == 1.0 and "eval/final_budget_columns" not in last
    assert last["data/val_tokens"] == len(t.corpus.val) - 1


def test_a_budget_needs_the_full_final_evaluation(tmp_path):
    with pytest.raises(ConfigError, match="final_eval_tokens"):
        trainer(tmp_path, 100, final_eval="sampled")
    with pytest.raises(ConfigError, match="final_eval_tokens"):
        trainer(tmp_path, -1)
