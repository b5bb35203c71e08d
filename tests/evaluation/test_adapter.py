"""lm-eval's `nlsweep` model on trained trials of every built-in kind: a log-likelihood is the
hand sum of log-softmax over the continuation's tokens, the greedy flag is right, and nothing
depends on the batch size or on the other requests of a batch."""

import json

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from nlsweep.evaluation import Scorer, ScoringError, evaluate, trial_from_trainer
from nlsweep.evaluation.adapter import NlsweepLM
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

KINDS = {
    "transformer": {},
    "nested_lstm": {"state": {"mode": "persistent"}},
    "titans": {},
    "hope": {"cms": {"token_periods": [1, 4]}},
    "hope_attention": {"cms": {"token_periods": [1, 4]}},
}
W = 16


def trained(kind: str) -> Trainer:
    raw = {
        "model": {"kind": kind, "d_model": 16},
        "data": {"corpus": "pydoc", "seq_len": W, "batch_size": 4},
        "train": {
            "steps": 6,
            "eval_every": 6,
            "eval_batches": 1,
            "threads": 1,
            "seed": 1,
            "final_eval": "sampled",
        },
        **KINDS[kind],
    }
    t = Trainer(TrialConfig.from_dict(raw), torch.device("cpu"))
    list(t.run())
    return t


@pytest.fixture(scope="module", params=list(KINDS))
def lm(request):
    return NlsweepLM(trial=trial_from_trainer(trained(request.param)), batch_size=4)


REQUESTS = [
    ("def foo(", "x):"),
    ("import ", "os"),
    ("The value", " of"),
    ("x" * 40 + " = ", "1"),  # longer than the window: its left is dropped
    ("class A", "(object):"),
    ("a", "b"),
]


def ll(lm, pairs):
    return lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
                            disable_tqdm=True)  # fmt: skip


@torch.no_grad()
def hand(lm, context: str, continuation: str) -> tuple[float, bool]:
    """The continuation's log-likelihood by hand: one forward of the last W inputs alone,
    log-softmax, the continuation's targets picked and summed. The tokens are lm-eval's split
    (a context's trailing spaces belong to the continuation)."""
    ctx, cont = lm._encode_pair(context, continuation)
    whole = torch.tensor(ctx + cont)[-(W + 1) :]
    x, y = whole[:-1][None], whole[1:][None]
    model = lm.trial.model
    kw = {"targets": y} if getattr(type(model), "uses_targets", False) else {}
    logits, _ = model(x, None, **kw)
    logp = F.log_softmax(logits.float(), -1)[0, -len(cont) :]
    picked = logp.gather(-1, y[0, -len(cont) :, None])[:, 0]
    return float(picked.sum()), bool((logp.argmax(-1) == y[0, -len(cont) :]).all())


def test_a_loglikelihood_is_the_hand_sum_of_log_softmax(lm):
    got = ll(lm, REQUESTS)
    for (c, x), (score, greedy) in zip(REQUESTS, got):
        want, want_greedy = hand(lm, c, x)
        assert score == pytest.approx(want, rel=1e-5, abs=1e-5), (c, x)
        assert greedy == want_greedy
        assert score < 0


def test_the_greedy_flag(lm):
    """A continuation made of the model's own argmax tokens is greedy; change its last token
    to anything else and it is not."""
    ctx = lm.tok_encode("def main(")
    model = lm.trial.model
    seq = list(ctx)
    with torch.no_grad():
        for _ in range(4):
            x = torch.tensor(seq[-W:])[None]
            kw = {"targets": torch.full_like(x, -100)} if lm.scorer.targets else {}
            logits, _ = model(x, None, **kw)
            seq.append(int(logits[0, -1].argmax()))
    cont = seq[len(ctx) :]
    vocab = len(lm.tok)
    wrong = [*cont[:-1], (cont[-1] + 1) % vocab]
    (s1, g1), (s2, g2) = lm.scorer.loglikelihood([(ctx, cont), (ctx, wrong)])
    assert g1 is True and g2 is False and s1 > s2
    # and generate_until continues the same way, cut at its stop string
    text = lm.tok_decode(cont)
    req = Instance("generate_until", {}, ("def main(", {"until": ["\u2603"], "max_gen_toks": 4}), 0)
    assert lm.generate_until([req]) == [text]
    if len(text) > 1:
        stop = text[1]
        req = Instance("generate_until", {}, ("def main(", {"until": [stop], "max_gen_toks": 4}), 0)
        assert lm.generate_until([req]) == [text.split(stop)[0]]


def test_scores_depend_on_neither_batch_size_nor_batch_mates(lm):
    alone = [ll(lm, [p])[0] for p in REQUESTS]
    for size in (1, 2, 3, 16):
        lm.scorer.batch_size = size
        together = ll(lm, REQUESTS)
        for a, b in zip(alone, together):
            assert b[0] == pytest.approx(a[0], rel=1e-5, abs=1e-5) and a[1] == b[1]
    lm.scorer.batch_size = 4
    # the same request among very different neighbours
    crowd = [("zzzz" * 9, "q"), REQUESTS[1], ("(" * 30, ")" * 9), REQUESTS[1]]
    got = ll(lm, crowd)
    assert got[1][0] == pytest.approx(alone[1][0], rel=1e-5, abs=1e-5) and got[1] == got[3]


def test_rolling_loglikelihood_scores_every_token(lm):
    """A string shorter than the window: log p of every token, the first conditioned on the
    end-of-text prefix, summed; a longer one: the sum of its disjoint windows."""
    text = "import os\nx = 1\n"
    ids = lm.tok_encode(text)
    req = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    (want, _), = lm.scorer.loglikelihood([([lm.eot_token_id], ids)])  # fmt: skip
    assert lm.loglikelihood_rolling(req)[0] == pytest.approx(want, rel=1e-5)
    long = text * 4
    ids = lm.tok_encode(long)
    assert len(ids) > 2 * W
    total = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (long,), 0)])[0]
    # lm-eval's disjoint windows: the first W tokens after the prefix, then each next W
    # read with the W inputs before them; the sum is what its perplexity tasks divide
    expect = lm.scorer.loglikelihood([([lm.eot_token_id], ids[:W])])[0][0]
    for s in range(W, len(ids), W):
        expect += lm.scorer.loglikelihood([(ids[:s], ids[s : s + W])])[0][0]
    assert total == pytest.approx(expect, rel=1e-5)


def test_carry_reads_a_long_request_in_calls_with_the_state_carried():
    """For a kind whose state is all a token sees of earlier calls, reading in calls of 8
    with the state carried equals one pass over the whole request (window 64); truncating
    to 8 does not."""
    t = trained("nested_lstm")
    trial = trial_from_trainer(t)
    pairs = [(trial.tokenizer.encode("for i in range(10):\n    ").tolist(),
              trial.tokenizer.encode("print(i)").tolist())]  # fmt: skip
    whole = Scorer(trial.model, 64, "truncate").loglikelihood(pairs)
    carried = Scorer(trial.model, 8, "carry").loglikelihood(pairs)
    cut = Scorer(trial.model, 8, "truncate").loglikelihood(pairs)
    assert carried[0][0] == pytest.approx(whole[0][0], rel=1e-5)
    assert cut[0][0] != pytest.approx(whole[0][0], rel=1e-3)


def test_bad_settings_are_one_line():
    trial = trial_from_trainer(trained("transformer"))
    with pytest.raises(ScoringError, match="keeps no state between calls"):
        NlsweepLM(trial=trial, context="carry")
    with pytest.raises(ScoringError, match="context: truncate or carry"):
        NlsweepLM(trial=trial, context="sideways")
    with pytest.raises(ScoringError, match="auto is not supported"):
        NlsweepLM(trial=trial, batch_size="auto:4")
    with pytest.raises(ScoringError, match="unknown pretrained"):
        NlsweepLM(trial=trial, pretrained="gpt2")
    with pytest.raises(ScoringError, match="above the model's max_len"):
        NlsweepLM(trial=trial, max_length=100000)
    with pytest.raises(ScoringError, match="run id is required"):
        NlsweepLM()
    lm = NlsweepLM(trial=trial)
    with pytest.raises(ScoringError, match="greedy only"):
        lm.generate_until([Instance("generate_until", {}, ("a", {"do_sample": True}), 0)])
    with pytest.raises(ScoringError, match="longer than the window"):
        lm.scorer.loglikelihood([([1], [2] * (W + 1))])


def write_task(folder, rows) -> str:
    """A local multiple-choice lm-eval task: a task YAML and its jsonl."""
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_mc.yaml").write_text(
        "task: nlsweep_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return "nlsweep_tiny_mc"


MC = [
    {"question": "import", "choices": [" os", " zzq", " 123"], "answer": 0},
    {"question": "def f(x):\n    return", "choices": [" x", " ]]]]", " ((("], "answer": 0},
    {"question": "class", "choices": [" ~~~", " Foo:", " ;;"], "answer": 1},
    {"question": "for i in", "choices": [" range(3):", " }}}}", " @@@"], "answer": 0},
    {"question": "print(", "choices": ["%%%", "'hi')", "}"], "answer": 1},
    {"question": "x =", "choices": [" 1", " !!", " ``"], "answer": 0},
]


def test_a_local_multiple_choice_task_runs_end_to_end(tmp_path):
    """lm-eval runs a local jsonl task on the nlsweep model; its accuracy is the share of
    questions whose gold choice the scorer gives the highest log-likelihood."""
    task = write_task(tmp_path, MC)
    lm = NlsweepLM(trial=trial_from_trainer(trained("transformer")), batch_size=5)
    metrics, results = evaluate(lm, [task], include_path=[tmp_path])
    assert set(metrics) == {f"eval/{task}/acc", f"eval/{task}/acc_stderr"}
    right = 0
    for row in MC:
        scores = ll(lm, [(row["question"], c) for c in row["choices"]])
        right += max(range(3), key=lambda i: scores[i][0]) == row["answer"]
    assert metrics[f"eval/{task}/acc"] == pytest.approx(right / len(MC))
    assert results["results"][task]["acc,none"] == metrics[f"eval/{task}/acc"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_recorded_config_reads_back_as_the_same_config(kind):
    """What a trial run records (`config.json`: every field written out) is the config the
    evaluation rebuilds its model from."""
    from nlsweep.config.builder import to_dict

    raw = {"model": {"kind": kind, "d_model": 16}, "data": {"corpus": "pydoc", "seq_len": W},
           "optim": {"lr": 1e-3}, "train": {"steps": 7, "seed": 4}, **KINDS[kind]}  # fmt: skip
    cfg = TrialConfig.from_dict(raw)
    assert TrialConfig.from_recorded(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_evaluating_inside_a_trial_leaves_the_trainer_as_it_was(tmp_path):
    """The in-trial evaluation (`eval_trainer`) puts back the weights, buffers, train mode and
    global RNGs lm-eval touched, so the trial's final checkpoint is the one it would write
    without `eval:`; it returns the scores and the settings each task ran under."""
    import random

    import numpy as np

    from nlsweep.evaluation import EVAL_DONE, EvalConfig, eval_trainer

    t = trained("hope")  # an in-context learner: its forward reads targets
    task = write_task(tmp_path, MC)
    t.model.train()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    out = eval_trainer(t, EvalConfig(tasks=[task], include_path=[str(tmp_path)], limit=4))
    assert 0 <= out[f"eval/{task}/acc"] <= 1 and json.loads(out[EVAL_DONE])[task]
    assert t.model.training
    after = t.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == (
        random.Random(5).random(), float(np.random.RandomState(5).rand()),
        float(torch.rand(1, generator=torch.Generator().manual_seed(5))),
    )  # fmt: skip
