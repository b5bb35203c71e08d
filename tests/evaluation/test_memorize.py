"""Test-time memorization: the prompt (and the gold answer) replayed through the model's
in-context memory before each query. Zero steps is no memorization; the replay changes the
recurrent state and nothing else; with reset, nothing leaks from one request to the next."""

import pytest
import torch
from lm_eval.api.instance import Instance

from nlsweep.evaluation import EvalConfig, ScoringError, eval_trial, trial_from_trainer
from nlsweep.evaluation.adapter import NlsweepLM
from nlsweep.evaluation.config import MemorizeConfig
from tests.evaluation.test_adapter import MC, REQUESTS, W, ll, trained, write_task

MEMORY_KINDS = ["titans", "hope", "hope_attention"]


@pytest.fixture(scope="module", params=MEMORY_KINDS)
def trial(request):
    return trial_from_trainer(trained(request.param))


def memo(trial, **kw):
    return NlsweepLM(trial=trial, memorize=MemorizeConfig(**kw), gold=lambda t, d: " x")


def test_zero_steps_is_no_memorization(trial):
    plain = ll(NlsweepLM(trial=trial), REQUESTS)
    assert ll(memo(trial, steps=0), REQUESTS) == plain
    # the one-request-at-a-time path of memorization, with nothing replayed, agrees too
    lm = memo(trial, steps=1)
    pairs = [lm._encode_pair(c, x) for c, x in REQUESTS]
    alone = lm.scorer.memorized(pairs, [[] for _ in pairs], steps=1)
    for (a, ga), (b, gb) in zip(alone, plain):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5) and ga == gb


@torch.no_grad()
def test_the_replay_changes_the_state_and_nothing_else(trial):
    """k replays = the state after reading the prompt k times, carried into the query; the
    parameters are untouched, and replaying changes the scores (the memory acted)."""
    lm = memo(trial, steps=2)
    params = {k: v.clone() for k, v in trial.model.state_dict().items()}
    got = ll(lm, REQUESTS[:3])
    assert all(torch.equal(params[k], v) for k, v in trial.model.state_dict().items())
    plain = ll(NlsweepLM(trial=trial), REQUESTS[:3])
    assert any(abs(a[0] - b[0]) > 1e-4 for a, b in zip(got, plain))
    # by hand: the prompt read twice (all of it, teaching from each next token), then the
    # query read from that state; its continuation's log-probabilities summed
    model, targets = trial.model, getattr(type(trial.model), "uses_targets", False)
    for (c, x), (score, _) in zip(REQUESTS[:3], got):
        state = None
        prompt = torch.tensor(lm.tok_encode(c))[None]
        for _ in range(2):
            for s in range(0, prompt.shape[1], W):
                xs = prompt[:, s : s + W]
                ys = torch.cat([prompt[:, 1:], torch.tensor([[-100]])], 1)[:, s : s + W]
                _, state = model(xs, state, **({"targets": ys} if targets else {}))
        ctx, cont = lm._encode_pair(c, x)
        whole = torch.tensor(ctx + cont)[-(W + 1) :]
        xs, ys = whole[:-1][None], whole[1:][None]
        logits, _ = model(xs, state, **({"targets": ys} if targets else {}))
        logp = torch.log_softmax(logits.float(), -1)[0, -len(cont) :]
        want = float(logp.gather(-1, ys[0, -len(cont) :, None]).sum())
        assert score == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_with_reset_nothing_leaks_between_requests(trial):
    first, other = REQUESTS[0], ("The quick brown fox", " jumps")
    alone = ll(memo(trial, steps=1), [first])[0]
    after = ll(memo(trial, steps=1), [other, first])[1]
    assert after == alone
    # without reset the memory of the request before is carried into the next (by design)
    carried = ll(memo(trial, steps=1, reset=False), [other, first])[1]
    assert carried[0] != pytest.approx(alone[0], rel=1e-6)


def test_a_kind_without_in_context_memory_is_refused(tmp_path):
    for kind in ("transformer", "nested_lstm"):
        trial = trial_from_trainer(trained(kind))
        with pytest.raises(ScoringError, match="declares no in-context memory"):
            memo(trial, steps=1)
        NlsweepLM(trial=trial, memorize=MemorizeConfig(steps=0))  # off: nothing to refuse
    # in a sweep's evaluation, such a kind's memorized scores are skipped, and it is said
    task = write_task(tmp_path, MC)
    ev = EvalConfig(tasks=[task], include_path=[str(tmp_path)], memorize=MemorizeConfig(steps=1))
    metrics, tags, warnings = eval_trial(trial, ev)
    assert metrics == {} and list(tags) == [f"nlsweep.eval.{task}.mem1"]
    assert "declares no in-context memory" in warnings[f"eval_{task}.mem1"]
    lm = memo(trial_from_trainer(trained("titans")), steps=1)
    with pytest.raises(ScoringError, match="only for loglikelihood requests"):
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("abc",), 0)])


def test_memorizing_with_the_gold_answer_on_a_local_task(tmp_path):
    """use_answer replays the prompt and the task's gold choice; the scores go under their
    own label, beside the plain ones, with their own settings tag."""
    task = write_task(tmp_path, MC)
    trial = trial_from_trainer(trained("titans"))
    plain = EvalConfig(tasks=[task], include_path=[str(tmp_path)])
    answer = EvalConfig(tasks=[task], include_path=[str(tmp_path)],
                        memorize=MemorizeConfig(steps=1, use_answer=True))  # fmt: skip
    m0, tags0, w0 = eval_trial(trial, plain)
    m1, tags1, w1 = eval_trial(trial, answer)
    assert w0 == w1 == {}
    assert set(m0) == {f"eval/{task}/acc", f"eval/{task}/acc_stderr"}
    label = f"{task}.mem1.answer"
    assert set(m1) == {f"eval/{label}/acc", f"eval/{label}/acc_stderr"}
    assert (
        list(tags1) == [f"nlsweep.eval.{label}"]
        and '"use_answer": true' in tags1[f"nlsweep.eval.{label}"]
    )
    # having read the right answer just before, the model prefers it at least as often
    assert m1[f"eval/{label}/acc"] >= m0[f"eval/{task}/acc"]
