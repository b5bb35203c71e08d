"""The report's evaluation section: the lm-evaluation-harness scores each finished trial was
given (`eval/<task>/<metric>` on its run, by the spec's `eval:` section or `nlsweep eval`),
with the statistics of the main table.

    per task and metric, one row per configuration (seeds pooled):
        n, mean +- std, 95% t-interval of the mean,
        difference to the baseline configuration with its interval (paired by seed when the
        seeds match, Welch otherwise) and Holm's adjusted p across the rows of that metric
    the settings the scores were made with (the runs' `nlsweep.eval.<task>` tags), and the
    spread of lm-eval's own standard errors (`<metric>_stderr`): the sampling error of one
    trial's score on the task's documents, beside the seed-to-seed spread above
    needles: accuracy against haystack length per configuration and mode (carry, fresh), the
    peak memory at the longest length, and the figure `needles.png`

Higher is better for the accuracies and exact matches lm-eval reports, so no row is marked
best: a task's metric may also be a perplexity.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from nlsweep.config.space import trial_label
from nlsweep.report._figures import needle_curves
from nlsweep.report.render import _ci, _fmt, _fmt_p, _table, rel
from nlsweep.report.results import Context, Trial
from nlsweep.report.stats import compare, holm, summarize

KEY_RE = re.compile(r"^eval/([^/]+)/([^/]+)$")
NEEDLE_RE = re.compile(r"^eval/needle_(carry|fresh)/acc_len(\d+)$")
TAG_PREFIX = "nlsweep.eval."


def eval_keys(trials: list[Trial]) -> list[tuple[str, str]]:
    """(task, metric) of every score a finished trial carries, stderr excluded, sorted."""
    found = set()
    for t in trials:
        for key in t.run.metrics:
            m = KEY_RE.match(key)
            if m and not m.group(2).endswith("_stderr") and not m.group(1).startswith("needle_"):
                found.add((m.group(1), m.group(2)))
    return sorted(found)


def _groups(trials: list[Trial]) -> dict[str, list[Trial]]:
    out: dict[str, list[Trial]] = {}
    for t in trials:
        out.setdefault(trial_label(t.factors), []).append(t)
    return out


def _plain_of(label: str) -> str | None:
    """The task a memorized label (`piqa.mem1.answer`) scores without memorization."""
    m = re.match(r"^(.+)\.mem\d+(\.answer)?(\.carried)?$", label)
    return m.group(1) if m else None


def _settings(trials: list[Trial], task: str) -> str:
    seen = {t.run.tags.get(TAG_PREFIX + task) for t in trials} - {None}
    if len(seen) != 1:
        return "settings differ between runs" if seen else "settings not recorded"
    s = json.loads(seen.pop())
    mem = s.get("memorize") or {}
    memo = (f"memorize {mem['steps']} replay(s) of the prompt"
            f"{' and its gold answer' if mem.get('use_answer') else ''}"
            f"{', carried across requests' if not mem.get('reset', True) else ''}"
            if mem.get("steps") else "no memorization")  # fmt: skip
    parts = [memo, f"limit {s.get('limit') or 'all'}", f"{s.get('num_fewshot', 0)}-shot",
             f"context {s.get('context')}", f"window {s.get('max_length') or 'data.seq_len'}",
             f"lm-eval {s.get('lm_eval')}"]  # fmt: skip
    return ", ".join(parts)


def evaluation_section(trials: list[Trial], ctx: Context, fig_dir: Path, md_dir: Path
                       ) -> list[str]:  # fmt: skip
    """Markdown lines of the section; none when no finished trial was evaluated."""
    done = [t for t in trials if t.final is not None]
    return _task_lines(done, ctx) + needle_lines(done, fig_dir, md_dir)


def _task_lines(done: list[Trial], ctx: Context) -> list[str]:
    keys = eval_keys(done)
    if not keys:
        return []
    groups = _groups(done)
    base_label = trial_label(ctx.baseline) if ctx.baseline else None
    base = groups.get(base_label) if base_label is not None else None
    lines = [
        "",
        "## Evaluations (lm-evaluation-harness)",
        "",
        "Each finished trial's final model on lm-eval tasks (`eval/<task>/<metric>` on its run). "
        "Mean and 95% t-interval over seeds; the difference to the baseline row is paired by "
        "seed when the seeds match, with Holm's adjustment across the rows of each metric. "
        "Memorized scores (`.mem<k>`) are set against the same trials' scores without "
        "memorization, paired by seed; kinds without an in-context memory have none.",
    ]
    for task, metric in keys:
        key = f"eval/{task}/{metric}"
        have = {label: [t for t in g if key in t.run.metrics] for label, g in groups.items()}
        have = {label: g for label, g in have.items() if g}
        others = [label for label in have if label != base_label]
        comps = {}
        plain = _plain_of(task)
        if plain is not None:  # memorized scores: against the same trials without it
            against, base_label_here = f"eval/{plain}/{metric}", None
            for label in have:
                ref = {t.seed: t.run.metrics[against] for t in groups[label]
                       if against in t.run.metrics}  # fmt: skip
                comps[label] = compare({t.seed: t.run.metrics[key] for t in have[label]}, ref)
            others = list(have)
        elif base and any(key in t.run.metrics for t in base):
            base_label_here = base_label
            ref = {t.seed: t.run.metrics[key] for t in base if key in t.run.metrics}
            for label in others:
                comps[label] = compare({t.seed: t.run.metrics[key] for t in have[label]}, ref)
        else:
            base_label_here = base_label
        adjusted = dict(zip(others, holm([c.p if c else None for c in
                                          (comps.get(label) for label in others)])))  # fmt: skip
        body = []
        for label, g in have.items():
            s = summarize(t.run.metrics[key] for t in g)
            c = comps.get(label)
            versus = "baseline" if label == base_label_here else (
                f"{c.diff:+.4f} {_ci(c.ci)}" if c else "n/a")  # fmt: skip
            p = "" if label == base_label_here else _fmt_p(adjusted.get(label))
            body.append([label or "(base)", str(s.n), f"{_fmt(s.mean)} ± {_fmt(s.std)}",
                         _ci(s.ci), versus, p])  # fmt: skip
        errs = [t.run.metrics.get(f"eval/{task}/{metric}_stderr") for g in have.values()
                for t in g]  # fmt: skip
        errs = [e for e in errs if e is not None and math.isfinite(e)]
        spread = (f"; lm-eval's standard error of one trial's score: {min(errs):.4f} to "
                  f"{max(errs):.4f}" if errs else "")  # fmt: skip
        every = [t for g in have.values() for t in g]
        lines += ["", f"### `{task}`: {metric}", "",
                  f"{_settings(every, task)}{spread}.", ""]  # fmt: skip
        versus_what = "without memorization" if plain is not None else "baseline"
        lines += _table(["config", "n", "mean ± std", "95% CI",
                         f"Δ vs {versus_what} [95% CI]", "p (Holm)"], body)  # fmt: skip
    return lines


def needle_lines(done: list[Trial], fig_dir: Path, md_dir: Path) -> list[str]:
    """Needle accuracy against haystack length per configuration and mode, with the peak
    memory at the longest length, and the figure."""
    series: dict[tuple[str, str], dict[int, list[float]]] = {}
    for label, g in _groups(done).items():
        for t in g:
            for key, value in t.run.metrics.items():
                m = NEEDLE_RE.match(key)
                if m:
                    series.setdefault((label, m.group(1)), {}).setdefault(int(m.group(2)), [])
                    series[(label, m.group(1))][int(m.group(2))].append(value)
    if not series:
        return []
    lengths = sorted({n for by in series.values() for n in by})
    settings = {t.run.tags.get(TAG_PREFIX + "needles") for t in done} - {None}
    chance = None
    if len(settings) == 1:
        s = json.loads(settings.pop())
        chance = 1 / s["candidates"]
        about = (f"{s['samples']} haystacks per length and seed, the key ({s['digits']} "
                 f"digits) chosen among {s['candidates']} by log-likelihood: chance is "
                 f"{chance:.2f}")  # fmt: skip
    else:
        about = "settings differ between runs" if settings else "settings not recorded"
    body = []
    for (label, mode), by in series.items():
        cells = []
        for n in lengths:
            vals = by.get(n, [])
            cells.append(f"{summarize(vals).mean:.2f} (n={len(vals)})" if vals else "n/a")
        rss = [t.run.metrics.get(f"eval/needle_{mode}/rss_mb_len{lengths[-1]}")
               for t in done if trial_label(t.factors) == label]  # fmt: skip
        rss = [r for r in rss if r is not None]
        body.append([label or "(base)", mode, *cells, f"{max(rss):.1f}" if rss else "n/a"])
    path = fig_dir / "needles.png"
    needle_curves(series, chance, path)
    return [
        "",
        "## Needle in a haystack",
        "",
        "A pass key hidden at a random depth of the trial's own held-out text, asked for at the "
        "end. carry: the whole haystack read in calls of data.seq_len with the recurrent state "
        "carried; fresh: the last call alone. Mean accuracy over seeds; "
        f"{about}. Peak memory: the most resident memory above the start of the longest "
        "length that one trial took while scoring it.",
        "",
        *_table(
            ["config", "mode", *[f"{n} tokens" for n in lengths], f"peak MB at {lengths[-1]}"], body
        ),  # fmt: skip
        "",
        f"![needle accuracy against length]({rel(path, md_dir)})",
    ]
