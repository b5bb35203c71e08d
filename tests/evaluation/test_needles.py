"""Needles in long haystacks of a trial's held-out text: the requests hold what they say, carry
reads the whole haystack in calls of seq_len with the state carried, fresh reads one call, and
memory stays bounded by the call, not the haystack."""

import pytest
import torch

from nlsweep.evaluation import NeedleConfig, ScoringError, run_needles, trial_from_trainer
from nlsweep.evaluation.needles import NEEDLE, QUESTION, needle_requests
from nlsweep.evaluation.scorer import Scorer
from tests.evaluation.test_adapter import trained


@pytest.fixture(scope="module")
def trial():
    return trial_from_trainer(trained("nested_lstm"))


def test_a_haystack_holds_its_needle_and_asks_for_it(trial):
    cfg = NeedleConfig(lengths=[512], samples=3, candidates=4, digits=5)
    tok = trial.tokenizer
    for sample in range(3):
        ctx, conts, true = needle_requests(tok, trial.heldout, cfg, 512, sample)
        text = tok.decode(ctx)
        keys = [tok.decode(c).strip() for c in conts]
        assert len(set(keys)) == 4 and all(len(k) == 5 and k.isdigit() for k in keys)
        assert NEEDLE.format(key=keys[true]) in text and text.endswith(QUESTION)
        assert len(ctx) + len(conts[true]) == pytest.approx(512, abs=8)
        depth = text.index(NEEDLE.format(key=keys[true])) / len(text)
        assert 0.05 < depth < 0.95
    again = needle_requests(tok, trial.heldout, cfg, 512, 0)
    assert again == needle_requests(tok, trial.heldout, cfg, 512, 0)  # seeded


def test_carry_reads_the_whole_haystack_and_fresh_one_call(trial):
    cfg = NeedleConfig(lengths=[256, 1024], samples=2, candidates=3)
    W = trial.cfg.data.seq_len
    out, skipped = run_needles(trial, cfg)
    assert skipped == {}
    for mode in ("carry", "fresh"):
        for n in (256, 1024):
            acc = out[f"eval/needle_{mode}/acc_len{n}"]
            assert acc in (0.0, 0.5, 1.0)
    ctx, conts, _ = needle_requests(trial.tokenizer, trial.heldout, cfg, 1024, 0)
    carry = Scorer(trial.model, W, "carry", batch_size=3)
    fresh = Scorer(trial.model, W, "truncate", batch_size=3)
    carried = carry.loglikelihood([(ctx, c) for c in conts])
    cut = fresh.loglikelihood([(ctx, c) for c in conts])
    assert carry.calls == -(-(len(ctx) + len(conts[0]) - 1) // W) and fresh.calls == 1
    # carrying the state over the haystack is one pass over it (state is all a call sees)
    whole = Scorer(trial.model, 2048, "truncate", batch_size=3).loglikelihood(
        [(ctx, c) for c in conts]
    )
    assert [s for s, _ in carried] == pytest.approx([s for s, _ in whole], rel=1e-5)
    assert len(cut) == 3  # fresh: the last call alone (its count above)


@pytest.mark.slow
def test_memory_is_bounded_by_the_call_not_the_haystack(trial):
    """Peak resident memory above the start of a length, carried over 64k tokens, stays at
    what 1k tokens take (a few MB), not what a 64k window would."""
    cfg = NeedleConfig(lengths=[1024, 65536], samples=1, candidates=2, modes=["carry"])
    out, _ = run_needles(trial, cfg)
    small, large = out["eval/needle_carry/rss_mb_len1024"], out["eval/needle_carry/rss_mb_len65536"]
    assert large < 64, (small, large)
    # what one 64k window would hold: (candidates, 64k, V) float logits alone
    assert 2 * 65536 * len(trial.tokenizer) * 4 / 2**20 > 4 * max(large, 1)


def test_a_kind_without_state_has_no_carry_mode_and_says_so():
    stateless = trial_from_trainer(trained("transformer"))
    out, skipped = run_needles(stateless, NeedleConfig(lengths=[256], samples=1, candidates=2))
    assert set(out) == {"eval/needle_fresh/acc_len256", "eval/needle_fresh/rss_mb_len256"}
    assert "keeps no state between calls" in skipped["carry"]


def test_a_haystack_too_short_for_the_needle_is_refused(trial):
    with pytest.raises(ScoringError, match="cannot hold the needle"):
        needle_requests(trial.tokenizer, trial.heldout, NeedleConfig(lengths=[64]), 64, 0)
    with pytest.raises(ValueError, match="candidates"):
        NeedleConfig(candidates=1)
    assert torch.is_tensor(trial.heldout)
