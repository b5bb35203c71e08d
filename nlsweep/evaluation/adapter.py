"""An nlsweep trial as an lm-evaluation-harness model, registered in lm-eval's model registry
under the name `nlsweep` when this module is imported.

    from nlsweep.evaluation.adapter import NlsweepLM
    lm = NlsweepLM(run=RUN_ID, tracking_uri="sqlite:///mlflow.db")
    lm_eval.simple_evaluate(model=lm, tasks=[...])

or by name, from Python (`simple_evaluate(model="nlsweep", model_args="run=RUN_ID")`) once
this module is imported, and from the command line as `nlsweep lm-eval --model nlsweep
--model_args run=RUN_ID --tasks ...`: lm-eval's own command, with every option of it, run after
this registration. (lm-eval 0.4.13, the newest release, resolves `--model` against its own
table only, so its bare `lm_eval` command cannot see a model defined in another package.)

model_args:
    run             the trial's MLflow run id (or give `trial=`, a `TrialModel`, from Python)
    tracking_uri    its store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)
    checkpoint      a checkpoint folder or trainer.pt to use instead of the recorded one
    spec            the sweep's spec file, whose plugins define a plugin model kind
    context         truncate (default) or carry: how a request longer than the window is
                    read (`scorer.py`)
    max_length      the window W (default: the trial's data.seq_len)

and lm-eval's own `--batch_size` (requests per forward; 16 from Python when not given;
"auto" is refused) and `--device` (cpu when not given; cuda or cuda:N; lm-eval's default
`cuda:0` runs on the CPU of a machine without CUDA, with a warning).

Every request starts from a fresh recurrent state, unless test-time memorization (`memorize`,
a `MemorizeConfig`, from Python or a spec's `eval.memorize`) replays its prompt first. An
empty context is conditioned on the tokenizer's end-of-document id, else on a newline's id,
else on <unk> (id 0).
`generate_until` is greedy; sampling (`do_sample`, a temperature above 0) is refused.
"""

from __future__ import annotations

import logging
import os

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from nlsweep.evaluation.loading import TrialModel, trial_from_run
from nlsweep.evaluation.scorer import Scorer, ScoringError

DEFAULT_BATCH = 16
DEFAULT_GEN_TOKENS = 256


def _int(name: str, value, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ScoringError(f"model_args {name}: a positive integer, got {value!r}") from None
    if out < 1:
        raise ScoringError(f"model_args {name}: a positive integer, got {value!r}")
    return out


def _device(name: str | None) -> torch.device:
    """lm-eval's command line passes `cuda:0` unless told otherwise: without CUDA, that and
    `cuda` mean the CPU (said in the log); another device that is not there is refused."""
    if not name:
        return torch.device("cpu")
    if name in ("cuda", "cuda:0") and not torch.cuda.is_available():
        logging.getLogger("lm-eval").warning("nlsweep model: no CUDA device, running on cpu")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ScoringError(f"device: cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):  # fmt: skip
        raise ScoringError(f"device {name}: not on this machine")
    return dev


@register_model("nlsweep")
class NlsweepLM(TemplateLM):
    """lm-eval's `LM` interface over a `Scorer` of one trial's model."""

    def __init__(
        self,
        run: str | None = None,
        tracking_uri: str | None = None,
        checkpoint: str | None = None,
        spec: str | None = None,
        context: str = "truncate",
        max_length: int | None = None,
        batch_size: int | str | None = None,
        device: str | None = None,
        trial: TrialModel | None = None,
        memorize=None,
        gold=None,
        **unused,
    ):
        super().__init__()
        unused.pop("max_batch_size", None)  # lm-eval passes it with every model
        if unused:
            raise ScoringError(f"model_args: unknown {', '.join(sorted(unused))} (known: run, "
                               "tracking_uri, checkpoint, spec, context, max_length, "
                               "batch_size, device)")  # fmt: skip
        if str(batch_size).startswith("auto"):
            raise ScoringError("batch_size: a positive integer (auto is not supported)")
        self._device = _device(device)
        if trial is None:
            if run is None or run == "":
                raise ScoringError("model_args run: the trial's MLflow run id is required")
            if not isinstance(run, str):  # lm-eval's parser turns an all-digit value into a number
                raise ScoringError(f"model_args run: a run id, got the number {run!r}")
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
            trial = trial_from_run(run, uri, checkpoint, spec, self._device)
        self.trial = trial
        self.tok = trial.tokenizer
        window = _int("max_length", max_length, trial.cfg.data.seq_len)
        limit = getattr(trial.cfg.model, "max_len", None)
        if context == "truncate" and limit is not None and window > limit:
            raise ScoringError(f"max_length {window}: above the model's max_len {limit}")
        self.scorer = Scorer(trial.model, window, context, _int("batch_size", batch_size,
                             DEFAULT_BATCH), self._device)  # fmt: skip
        # test-time memorization (`MemorizeConfig`; from Python or an `eval:` section)
        self.memorize = memorize if memorize is not None and memorize.steps else None
        if self.memorize is not None and not getattr(type(trial.model), "memorizes", False):
            raise ScoringError(f"memorize: model kind {trial.kind} declares no in-context "
                               "memory (memorizes = True)")  # fmt: skip
        if self.memorize is not None and self.memorize.use_answer and gold is None:
            raise ScoringError("memorize.use_answer: no gold answers to replay were given")
        self.gold = gold

    # -- what lm-eval asks of a model ----------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eod = getattr(self.tok, "eod", None)
        if eod is not None:
            return int(eod)
        newline = self.tok.encode("\n").tolist()
        return int(newline[0]) if len(newline) == 1 else 0

    @property
    def max_length(self) -> int:
        return self.scorer.window

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"nlsweep-{self.trial.kind}-{getattr(self.tok, 'kind', 'text')}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
        return self.tok.encode(string).tolist()

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """lm-eval's log-likelihoods; with memorization, each request's prompt (and gold
        answer) is replayed through the model's in-context memory first."""
        if self.memorize is None:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        pairs, replays = [], []
        for req in requests:
            context, continuation = req.args
            if context:
                ctx, cont = self._encode_pair(context, continuation)
            else:
                ctx, cont = [self.eot_token_id], self.tok_encode(continuation)
            replay = context
            if self.memorize.use_answer:
                replay += self.gold(req.task_name, req.doc)
            pairs.append((ctx, cont))
            replays.append(self.tok_encode(replay) if replay else [])
        m = self.memorize
        out = self.scorer.memorized(pairs, replays, m.steps, m.reset)
        for req, answer in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, answer)
        return out

    def _refuse_memorize(self, what: str) -> None:
        if self.memorize is not None:
            raise ScoringError(f"memorize: only for loglikelihood requests, not {what}")

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
        out = self.scorer.loglikelihood([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), answer in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string: in disjoint windows of W tokens (truncate),
        or as one stream read in calls of W with the state carried (carry)."""
        self._refuse_memorize("loglikelihood_rolling (the prompt is the text scored)")
        pairs, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            ids = self.tok_encode(string)
            if self.scorer.context == "carry":
                windows = [([self.eot_token_id], ids)] if ids else []
            else:
                windows = [
                    make_disjoint_window(w)
                    for w in get_rolling_token_windows(ids, self.eot_token_id, self.max_length, 1)
                ]
            pairs += windows
            owner += [i] * len(windows)
        scores = self.scorer.loglikelihood(pairs)
        out = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            out[i] += lp
        for req, lp in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, lp)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, each cut at the first of its `until` strings."""
        self._refuse_memorize("generate_until")
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0) or 0) > 0:
                raise ScoringError("generate_until: greedy only (do_sample or a temperature "
                                   "above 0 was asked for)")  # fmt: skip
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            limit = _int("max_gen_toks", kwargs.pop("max_gen_toks", None), DEFAULT_GEN_TOKENS)
            settings.append((context, until))
            groups.setdefault((limit,), []).append(i)
        texts = [""] * len(requests)
        for (limit,), idx in groups.items():
            ctxs = [self.tok_encode(settings[i][0]) or [self.eot_token_id] for i in idx]

            def done(j: int, ids: list[int], idx=idx) -> bool:
                text = self.tok_decode(ids)
                return any(u and u in text for u in settings[idx[j]][1])

            for j, ids in enumerate(self.scorer.greedy(ctxs, limit, done)):
                text = self.tok_decode(ids)
                for u in settings[idx[j]][1]:
                    if u:
                        text = text.split(u)[0]
                texts[idx[j]] = text
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts
