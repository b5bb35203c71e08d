"""What bench/search_strategies.py counts and how it writes it: a replayed trial, the
trial-steps a search spends before a trial reaches a target, and the markdown report
(pure: no Ray, no training)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from nlsweep.spec import Spec

ROOT = Path(__file__).resolve().parent.parent

STRATEGIES = {
    "random": ["search={algorithm: random, num_samples: $N, seed: $S}", "scheduler={kind: fifo}"],
    "TPE": [
        "search={algorithm: optuna, sampler: tpe, num_samples: $N, seed: $S}",
        "scheduler={kind: fifo}",
    ],
    "TPE + ASHA": ["search={algorithm: optuna, sampler: tpe, num_samples: $N, seed: $S}"],
}


def key(values) -> str:
    """One configuration, the same from a Tune config value and from an MLflow param."""

    def norm(v):
        if isinstance(v, str):
            v = json.loads(v)
        return [float(x) for x in v] if isinstance(v, list) else float(v)

    return json.dumps([norm(v) for v in values])


@dataclass
class Ran:
    """One trial of a replayed search, in the order trials ran."""

    config: dict
    evals: int
    steps: int
    value: float
    complete: bool


def cost_to(ran: list[Ran], hit) -> tuple[int | None, int | None]:
    """(trial-steps spent, trials run) when the first complete trial with `hit(value)` ended."""
    spent = 0
    for i, r in enumerate(ran, 1):
        spent += r.steps
        if r.complete and hit(r.value):
            return spent, i
    return None, None


@dataclass
class Reference:
    """The grid sweep every search is measured against."""

    sweep: object
    spec_path: Path
    paths: list[str]
    curves: dict[str, list]
    sign: int
    """1: lower is better (mode min); -1: higher is better."""

    @property
    def finals(self) -> dict[str, float]:
        return {k: c[-1][1] for k, c in self.curves.items()}

    @property
    def best_key(self) -> str:
        return min(self.finals, key=lambda k: self.sign * self.finals[k])

    @property
    def full(self) -> int:
        """Trial-steps of the whole grid."""
        return sum(c[-1][0] for c in self.curves.values())

    def bound(self, within: float) -> float:
        return self.finals[self.best_key] * (1 + self.sign * within)

    def hit(self, within: float):
        b = self.bound(within)
        return lambda v: self.sign * (v - b) <= 0


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _value(v) -> str:
    return str([int(x) for x in v]) if isinstance(v, list) else f"{v:g}"


def _fmt_steps(v: int | None) -> str:
    return "not reached" if v is None else f"{v:,}"


def header(spec: Spec, spec_path: Path, ref: Reference, seeds: list, args: str) -> list[str]:
    best = dict(zip(ref.paths, json.loads(ref.best_key), strict=True))
    sweep, n = ref.sweep, len(ref.curves)
    asha = spec.scheduler
    return [
        f"# Search strategies on `{spec.name}`: grid, random, TPE, TPE + ASHA",
        "",
        "How many training steps does each search spend before one of its trials comes within "
        f"1% of the best held-out `{spec.metric}` of a full grid over the same space?",
        "",
        "| | |",
        "|---|---|",
        f"| space | `{_rel(spec_path)}`: "
        + ", ".join(f"`{p}` {list(d.values)}" for p, d in spec.space.items())
        + f" ({n} configurations) |",
        f"| reference | the grid sweep `{sweep.experiment}` (parent run `{sweep.parent.run_id}`), "
        f"spec `{_rel(ref.spec_path)}`, report `reports/{sweep.experiment}.md`: {n} trials of "
        f"{spec.base.train.steps} steps, training seed {spec.base.train.seed}, "
        f"{ref.full:,} trial-steps |",
        f"| grid's best | {spec.metric} {ref.finals[ref.best_key]:.4f} (final evaluation, whole "
        "held-out split) at " + ", ".join(f"`{p}` {_value(v)}" for p, v in best.items()) + " |",
        f"| searches | {n} trials each (the grid's count); search seeds "
        f"{', '.join(map(str, seeds))}; the spec's TPE settings and ASHA (grace period "
        f"{asha.grace_period} evaluations, reduction factor {asha.reduction_factor:g}, "
        f"{spec.base.train.eval_every} steps an evaluation) |",
        f"| command | `python bench/search_strategies.py {args}` |",
        "",
        "Each search is replayed over the grid's logged learning curves (module docstring of "
        "`bench/search_strategies.py`): the searcher and scheduler are the sweep's own, a trial "
        "reports at each evaluation what that configuration logged there, and the search is "
        "charged the steps its trials ran, one trial at a time, up to the end of the first trial "
        "that finished all its steps within the target. A trial ASHA stops is charged the steps "
        "to its last evaluation; it cannot itself reach the target (its last value is not a "
        "final, whole-split evaluation). Every replayed trial is in "
        f"`reports/{spec.name}_search/replays.json`.",
        "",
    ]


def target_section(spec: Spec, ref: Reference, results: dict, within: float) -> list[str]:
    hit, seeds = ref.hit(within), list(results["TPE"])
    near = sum(hit(v) for v in ref.finals.values())
    grid_to, grid_trials = cost_to(results["grid"][None], hit)
    what = f"come within {within:.1%} of the grid's best" if within else "reach the grid's best"
    lines = [
        f"## Trial-steps to {what}",
        "",
        f"Target: {spec.metric} {'<=' if ref.sign == 1 else '>='} {ref.bound(within):.4f}; "
        f"{near} of {len(ref.curves)} configurations reach it.",
        "",
        "| search | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean ± std | % of the grid | trials to the target (mean) "
        "| all its trials, % of the grid |",
        "|---|" + "---|" * (len(seeds) + 4),
        "| grid (all of it: it knows its best only at the end) | "
        + " | ".join(f"{ref.full:,}" for _ in seeds)
        + f" | {ref.full:,} | 100% | {len(ref.curves)} | 100% |",
    ]
    share = None
    for label in STRATEGIES:
        runs = results[label]
        costs = [cost_to(runs[s], hit) for s in seeds]
        got = [c for c, _ in costs if c is not None]
        if got:
            spread = f" ± {statistics.stdev(got):,.0f}" if len(got) > 1 else ""
            reached = f" ({len(got)} of {len(seeds)} reached)" if len(got) < len(seeds) else ""
            mean = f"{statistics.mean(got):,.0f}{spread}{reached}"
            pct = f"{statistics.mean(got) / ref.full:.0%}"
            trials = f"{statistics.mean(t for _, t in costs if t is not None):.1f}"
        else:
            mean, pct, trials = "not reached", "—", "—"
        whole = statistics.mean(sum(r.steps for r in runs[s]) for s in seeds) / ref.full
        lines.append(
            f"| {label} | "
            + " | ".join(_fmt_steps(c) for c, _ in costs)
            + f" | {mean} | {pct} | {trials} | {whole:.0%} |"
        )
        if label == "TPE + ASHA" and len(got) == len(seeds):
            share = statistics.mean(got) / ref.full
    lines += [
        "",
        f"In the order it enumerates the space, the grid first finished a trial on target after "
        f"{_fmt_steps(grid_to)} trial-steps ({grid_trials} trials): a number only hindsight gives, "
        "since a grid runs every configuration to know which was best.",
        "",
    ]
    if within == 0.01:
        verdict = (
            "not reached by every seed"
            if share is None
            else f"{share:.0%} of the grid's compute on average over {len(seeds)} search seeds "
            f"(target: at most 40%): {'met' if share <= 0.40 else 'not met'}"
        )
        lines += [f"**TPE + ASHA: {verdict}.**", ""]
    return lines


def trial_lists(spec: Spec, results: dict) -> list[str]:
    lines = ["## Each search, trial by trial", ""]
    for label in STRATEGIES:
        for s, runs in results[label].items():
            stopped = sum(not r.complete for r in runs)
            seq = ", ".join(f"{r.value:.3f}" + ("" if r.complete else f"@{r.steps}") for r in runs)
            lines.append(f"- {label}, seed {s} ({stopped} stopped early): {seq}")
    return lines + [
        "",
        f"Values are each trial's last `{spec.metric}` in the order the trials ran; `@N`: "
        "stopped by ASHA after N steps.",
        "",
    ]


def real_section(spec: Spec, ref: Reference, real, replayed: list[Ran]) -> list[str]:
    """The spec run for real (its own sweep, `max_concurrent` at a time) against the grid's
    curves and against the replay of its search seed: does a replay say what training does?"""
    trials = sorted((t for t in real.trials if spec.metric in t.history), key=lambda t: t.start_ms)
    same = 0
    ran = []
    for t in trials:
        k = key(t.params[p] for p in ref.paths)
        step, value = t.history[spec.metric][-1]
        same += (step, value) in ref.curves[k]
        complete = step == spec.base.train.steps
        ran.append(
            Ran(
                {p: t.params[p] for p in ref.paths},
                len(t.history[spec.metric]),
                step,
                value,
                complete,
            )
        )
    # Trials that start together start in either order: compare the first k as multisets.
    real_keys = [key(r.config.values()) for r in ran]
    replay_keys = [key(r.config.values()) for r in replayed]
    prefix = max(
        (k for k in range(len(ran) + 1) if sorted(real_keys[:k]) == sorted(replay_keys[:k])),
        default=0,
    )
    wall = (real.parent.end_ms or 0) - real.parent.start_ms
    hit = ref.hit(0.01)
    spent, k = cost_to(ran, hit)
    return [
        "## The spec run for real",
        "",
        f"`python run_sweep.py {_rel(ROOT / 'search_spaces' / (spec.name + '.yaml'))}` "
        f"(experiment `{spec.name}`, parent run `{real.parent.run_id}`, report "
        f"`reports/{spec.name}.md`): {len(trials)} trials, {spec.max_concurrent} at a time, "
        f"search seed {spec.plan.seed}, {wall / 1000 / 60:.1f} minutes of wall time "
        f"(the grid: {((ref.sweep.parent.end_ms or 0) - ref.sweep.parent.start_ms) / 60000:.1f}).",
        "",
        f"- {same} of {len(trials)} trials ended (finished, or stopped by ASHA) on exactly the "
        "value the grid's run of the same configuration logged at that step: training is "
        "deterministic per configuration, so the replay's values are what training gives.",
        f"- Its first {prefix} trials ran the same configurations as the first {prefix} of the "
        f"replay of search seed {spec.plan.seed} (two at a time, TPE sees each result later "
        "than in the one-at-a-time replay, so the two searches can part once it stops drawing "
        "its startup trials at random).",
        f"- Counted in start order, its first trial within 1% of the grid's best was trial "
        f"{k} after {_fmt_steps(spent)} trial-steps"
        + (f" ({spent / ref.full:.0%} of the grid's)" if spent else "")
        + "; every trial that started before it is counted whole, an upper bound when two run "
        "at a time.",
        f"- It spent {sum(r.steps for r in ran):,} trial-steps in all "
        f"({sum(r.steps for r in ran) / ref.full:.0%} of the grid's).",
        "",
    ]


def save(path: Path, results: dict) -> None:
    data = {
        label: {str(s): [vars(r) for r in runs] for s, runs in by_seed.items()}
        for label, by_seed in results.items()
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def load(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {
        label: {
            (None if s == "None" else int(s)): [Ran(**r) for r in runs]
            for s, runs in by_seed.items()
        }
        for label, by_seed in data.items()
    }
