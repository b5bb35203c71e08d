"""Reports from a synthetic MLflow store with known values: numbers, flags, valid markdown."""

import csv
import math
import os
import re
import subprocess
import sys

import pytest
from scipy import stats

from nlsweep.cli import main
from nlsweep.report.stats import compare, holm, same_to_digits, summarize
from nlsweep.report.writer import write_report
from tests.helpers import spec_text
from tests.stores import FINAL, make_store


def md_tables(text):
    blocks, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    return blocks + ([cur] if cur else [])


def cells(line):
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    uri, runs = make_store(tmp_path, overlap=0.02)
    out = write_report(uri, "synthetic", tmp_path / "reports" / "synthetic.md")
    return out, out.read_text(), runs


def test_markdown_is_valid_and_images_exist(report):
    out, text, _ = report
    for table in md_tables(text):
        widths = {len(cells(line)) for line in table}
        assert len(widths) == 1, table  # every row has as many cells as the header
        assert re.fullmatch(r"\|(---\|)+", table[1])
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images and all((out.parent / p).is_file() for p in images)
    assert (out.parent / "synthetic" / "table.csv").is_file()


def main_rows(text):
    table = next(t for t in md_tables(text) if "n" in cells(t[0]))
    header = cells(table[0])
    return [dict(zip(header, [c.strip("*") for c in cells(line)])) for line in table[2:]]


def test_main_table_numbers(report):
    _, text, _ = report
    rows = {(r["medium"], r["lr_unused"]): r for r in main_rows(text)}
    assert len(rows) == 6
    x = [2.40, 2.49, 2.41]
    r = rows[("1", "1")]
    assert r["n"] == "3"
    assert r["val/bpc mean ± std"] == f"{sum(x) / 3:.4f} ± {stats.tstd(x):.4f}"
    lo, hi = stats.t.interval(0.95, 2, loc=sum(x) / 3, scale=stats.sem(x))
    assert r["95% CI"] == f"[{lo:.4f}, {hi:.4f}]"
    assert r["best during training"] == f"{sum(x) / 3 - 0.01:.4f}"  # best eval = final - 0.01
    base = [2.50, 2.56, 2.47]
    d = [a - b for a, b in zip(x, base)]
    ci = stats.ttest_rel(x, base).confidence_interval(0.95)
    assert r["Δ vs baseline [95% CI]"].startswith(
        f"{sum(d) / 3:+.4f} [{ci.low:.4f}, {ci.high:.4f}] paired")  # fmt: skip
    assert rows[("4", "1")]["Δ vs baseline [95% CI]"] == "baseline"
    # medium=16 lost seed 2: n=2 with the gap shown, compared unpaired (Welch)
    r16 = rows[("16", "1")]
    assert r16["n"] == "2 (1 missing)"
    welch = stats.ttest_ind([2.60, 2.70], base, equal_var=False)
    wci = welch.confidence_interval(0.95)
    want = f"{2.65 - sum(base) / 3:+.4f} [{wci.low:.4f}, {wci.high:.4f}] Welch"
    assert r16["Δ vs baseline [95% CI]"].startswith(want)
    # Holm across the five non-baseline rows, by hand
    raw = {}
    for k in rows:
        if k == ("4", "1"):
            continue
        x_k = [FINAL[int(k[0])][s] for s in sorted(FINAL[int(k[0])])]
        if k[0] == "16":
            raw[k] = stats.ttest_ind(x_k, base, equal_var=False).pvalue
        elif k[0] == "4":  # a copy of the baseline: identical differences, p = 1 by definition
            raw[k] = 1.0
        else:
            raw[k] = stats.ttest_rel(x_k, base).pvalue  # fmt: skip
    order = sorted(raw, key=raw.get)
    expected, running = {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[k]))
        expected[k] = running
    for k, p in expected.items():
        assert rows[k]["p (Holm)"] == (f"{p:.2g}" if p >= 1e-4 else "<1e-4"), k
    # the lr_unused=2 copy of the baseline is identical: a zero difference, marked ≈
    assert rows[("4", "2")]["Δ vs baseline [95% CI]"].startswith("+0.0000")


def test_rows_follow_the_grid_with_the_baseline_first(report):
    _, text, _ = report
    order = [(r["medium"], r["lr_unused"]) for r in main_rows(text)]
    assert order == [("4", "1"), ("4", "2"), ("1", "1"), ("1", "2"), ("16", "1"), ("16", "2")]


def test_best_row_is_bold_and_ci_crossing_zero_is_marked(report):
    _, text, _ = report
    bold = [line for line in text.splitlines() if line.startswith("| **R")]
    assert len(bold) == 2 or len(bold) == 1
    assert all("| **1** |" in line for line in bold)  # medium=1 has the lowest mean
    welch_row = next(line for line in text.splitlines() if "Welch" in line)
    assert "≈" in welch_row  # n=2 vs 3: the interval of the difference contains 0


def test_sanity_flags(report):
    _, text, runs = report
    sanity = text.split("## Sanity checks", 1)[1]
    assert "**Probable no-op**: every value of `optim.lr_unused`" in sanity
    assert "cms.periods.medium`" not in sanity.split("Probable no-op")[1].split("\n")[0]
    assert "**Leaking split?** 16 of 18 runs" in sanity
    failed = [line for line in sanity.splitlines() if line.startswith("- **Failed**")]
    assert len(failed) == 2 and all("RuntimeError: boom" in line for line in failed)


def test_rows_carry_runs_and_rerun_command(report):
    _, text, runs = report
    assert f"`{runs[(1, 1, 0)][:8]}` (seed 0)" in text
    uri = re.search(r"in `(sqlite:///[^`]+)`", text).group(1)
    # R1 is the baseline row (medium=4, lr_unused=1), then the grid order
    assert re.search(r"- R3 `medium=1 lr_unused=1`: runs .*\n  `nlsweep rerun /x/spec.yaml R3 "
                     rf"--tracking-uri {re.escape(uri)}`", text)  # fmt: skip


def test_csv_matches_table(report):
    out, text, _ = report
    with open(out.parent / "synthetic" / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    r = next(r for r in rows if r["cms.periods.medium"] == "1" and r["optim.lr_unused"] == "1")
    assert float(r["mean"]) == pytest.approx(sum([2.40, 2.49, 2.41]) / 3)
    assert r["paired"] == "True" and len(r["run_ids"].split()) == 3


def test_clean_sweep_says_what_was_checked(tmp_path):
    uri, _ = make_store(tmp_path)
    text = write_report(uri, "synthetic", tmp_path / "s.md").read_text()
    assert "Leaking" not in text


def test_a_check_that_raises_leaves_no_report_here_or_in_mlflow(tmp_path):
    """The sweep's check for a stop signal, made when the report is ready: where it raises,
    neither the markdown (nor its .part) is on disk nor anything is stored in MLflow."""
    from nlsweep.tracking.store import Tracker
    from nlsweep.tracking.tags import TAG_ROLE

    uri, _ = make_store(tmp_path)
    out, calls = tmp_path / "reports" / "s.md", []

    def check():
        calls.append(sorted(p.name for p in out.parent.iterdir()))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_report(uri, "synthetic", out, check=check)
    assert calls == [["s", "s.md.part"]]  # called once, with the whole report ready
    assert sorted(p.name for p in out.parent.iterdir()) == ["s"]
    tracker = Tracker(uri)
    parent = next(r for r in tracker.runs("synthetic") if r.data.tags.get(TAG_ROLE) == "sweep")
    assert tracker.client.list_artifacts(parent.info.run_id) == []
    assert write_report(uri, "synthetic", out, check=lambda: None) == out and out.is_file()
    assert [a.path for a in tracker.client.list_artifacts(parent.info.run_id)] == ["report"]


def test_sampled_search_report(tmp_path):
    uri, _ = make_store(tmp_path, algorithm="optuna")
    out = write_report(uri, "synthetic", tmp_path / "opt.md")
    text = out.read_text()
    assert "optuna search: 18 trials, 16 finished" in text
    top = md_tables(text)[1]
    assert cells(top[2])[-3] == "2.4000"  # rank 1: the lowest final value
    assert len(top) == 2 + 10  # header, rule, top 10
    for name in ("history.png", "slice.png", "contour.png"):
        assert (tmp_path / "opt" / name).is_file()
    assert "Probable no-op" not in text  # no-op detection needs a grid
    # fANOVA on the rebuilt study: medium moves the objective, lr_unused never does
    imp = {cells(r)[0]: float(cells(r)[1]) for r in md_tables(text)[2][2:]}
    assert set(imp) == {"cms.periods.medium", "optim.lr_unused"}
    assert imp["cms.periods.medium"] > 0.9 > imp["optim.lr_unused"]
    assert "over the 16 trials that ran to the end" in text
    assert "![contour of cms.periods.medium and optim.lr_unused (Optuna)]" in text
    best = re.search(r"Re-run the best trial on the record: `nlsweep rerun \S+ ([0-9a-f]{8})", text)
    assert best is not None


def test_main_effects_table(report):
    """Marginal means and eta squared, checked against numpy on the known values."""
    import numpy as np

    _, text, _ = report
    table = next(t for t in md_tables(text) if cells(t[0])[0] == "factor")
    got = {}
    factor = None
    for line in table[2:]:
        c = cells(line)
        factor = c[0] or factor
        got[(factor, c[1])] = c
    finals = [(m, lr, v) for m, seeds in FINAL.items() for lr in (1, 2) for v in seeds.values()]
    y = np.array([v for _, _, v in finals])
    total = ((y - y.mean()) ** 2).sum()
    for name, idx in (("medium", 0), ("lr_unused", 1)):
        levels = {}
        for row in finals:
            levels.setdefault(row[idx], []).append(row[2])
        between = sum(len(v) * (np.mean(v) - y.mean()) ** 2 for v in levels.values())
        first = next(c for k, c in got.items() if k[0] == name and c[5])
        assert float(first[5]) == pytest.approx(between / total, abs=5e-4)
        for level, values in levels.items():
            c = got[(name, str(level))]
            assert int(c[2]) == len(values)
            assert float(c[3].split(" ± ")[0]) == pytest.approx(np.mean(values), abs=5e-5)
    assert float(next(c for k, c in got.items() if k[0] == "lr_unused" and c[5])[5]) == 0.0


def test_report_cli(tmp_path, capsys, write_spec):
    uri, _ = make_store(tmp_path)
    # by spec file: its name and tracking URI locate the sweep; the default output path
    spec = write_spec(spec_text({"name": "synthetic", "tracking_uri": uri}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["report", str(spec)]) == 0
    finally:
        os.chdir(cwd)
    assert (tmp_path / "reports" / "synthetic.md").is_file()
    capsys.readouterr()
    out = tmp_path / "cli.md"
    assert main(["report", "synthetic", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert out.is_file() and f"report: {out}" in capsys.readouterr().out
    assert main(["report", "nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("no experiment named 'nope'") and "\n" not in err


STATS = [
    # values, n, mean, std
    ([1.0, 2.0, 3.0], 3, 2.0, 1.0),
    ([5.0], 1, 5.0, math.nan),
    ([], 0, math.nan, math.nan),
]


@pytest.mark.parametrize("values,n,mean,std", STATS)
def test_summarize(values, n, mean, std):
    s = summarize(values)
    assert s.n == n
    assert (math.isnan(s.mean) and math.isnan(mean)) or s.mean == pytest.approx(mean)
    assert (math.isnan(s.std) and math.isnan(std)) or s.std == pytest.approx(std)
    assert (s.ci is None) == (n < 2)


def test_compare_edge_cases():
    assert compare({}, {0: 1.0}) is None
    one = compare({0: 1.0}, {0: 2.0})
    assert one.diff == -1.0 and one.ci is None and one.p is None
    const = compare({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5})
    assert const.paired and const.diff == pytest.approx(-0.5) and const.distinguishable


def test_holm_and_digits():
    assert holm([0.01, 0.04, None, 0.03]) == [0.03, 0.06, None, 0.06]
    assert holm([]) == []
    assert same_to_digits(2.123451, 2.123449) and not same_to_digits(2.1234, 2.1236)
    assert not same_to_digits(float("nan"), 1.0)


def test_params_read_back_as_numbers():
    from nlsweep.report.results import _parse

    assert _parse("1e-06") == 1e-06 and _parse("8") == 8 and _parse("adam") == "adam"
    assert _parse("True") is True and _parse("[1, 2]") == [1, 2]


def _trial(params, metrics, final=2.0):
    from nlsweep.report.results import Trial
    from nlsweep.tracking.read import RunData

    run = RunData("r", "r", "FINISHED", 0, 1, params, {}, metrics)
    return Trial(run=run, factors={}, seed=0, final=final, best=final)


def test_final_note_and_ppl_unit():
    from nlsweep.report.render import final_note, metric_label

    text = {"data.corpus": "tinyshakespeare", "train.final_eval": "full"}
    full = _trial(text, {"data/val_tokens": 111539.0, "eval/full_split": 1.0})
    by_config = _trial(text, {"data/val_tokens": 111539.0})  # marker not logged
    old = _trial({"data.corpus": "tinyshakespeare"}, {"data/val_tokens": 16384.0})
    sampled = _trial({**text, "train.final_eval": "sampled"}, {"data/val_tokens": 16384.0})
    task = _trial({"data.corpus": "mqar", "train.final_eval": "full"}, {"data/val_tokens": 96.0})
    assert final_note([full, by_config]) == "final: whole held-out split, 111,539 tokens"
    assert final_note([old]).startswith("final: the sampled held-out windows")
    assert final_note([sampled]).startswith("final: the sampled held-out windows")
    assert "whole held-out split for 1 of 2 runs, 16,384 to 111,539" in final_note([full, old])
    assert final_note([task]).startswith("final: the generated held-out set")
    budget = _trial({**text, "data.batch_size": 16, "train.final_eval_tokens": 4096},
                    {"data/val_tokens": 4096.0, "eval/full_split": 0.0,
                     "eval/final_budget_columns": 256.0})  # fmt: skip
    assert final_note([budget]) == (
        "final: a token budget (train.final_eval_tokens), the first 256 tokens of each of the "
        "16 contiguous rows of the held-out split, 4,096 tokens"
    )
    assert metric_label("val/ppl", [full]) == "`val/ppl` (per character)"
    assert metric_label("val/ppl", [task]) == "`val/ppl` (per token)"
    assert metric_label("val/bpc", [full]) == "`val/bpc`"


def test_the_sweep_runner_loads_scipy_and_matplotlib_only_for_a_report():
    """Start-up stays lean: the report's statistics and figures load when it is written."""
    code = (
        "import sys, nlsweep.cli, nlsweep.execution.sweep, nlsweep.execution.trainable\n"
        "import nlsweep.train\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'matplotlib'}))\n"
        "import nlsweep.report.writer\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'matplotlib'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "['matplotlib', 'scipy']"]


def test_header_sets_the_forecast_beside_the_actual_time():
    from nlsweep.report.render import forecast_vs_actual
    from nlsweep.tracking.read import RunData
    from nlsweep.tracking.tags import TAG_FORECAST, TAG_FORECAST_S, TAG_RESUMED

    said = "1m00s of wall time at 2 at a time, from earlier trials of the same sizes for 4 of 4"
    tags = {TAG_FORECAST_S: "60.0", TAG_FORECAST: said}
    run = RunData("p", "p", "FINISHED", 1_000, 91_000, {}, tags, {})
    assert forecast_vs_actual(run) == f"forecast {said}; actual 1m30s, 1.50x the forecast"
    run = RunData("p", "p", "FINISHED", 0, 5_000, {}, {TAG_RESUMED: "1"}, {})
    assert forecast_vs_actual(run) == (
        "no forecast (no earlier trials of these sizes when it started); actual 5s "
        "(resumed 1 time(s): includes the time between)"
    )


def test_the_header_names_the_data_and_a_mixtures_sources():
    from nlsweep.report.render import data_rows

    mixture = [{"path": "/d/a.jsonl", "weight": 1.0, "name": "web"},
               {"path": "/d/b/*.txt", "weight": 3.0, "name": "books"}]  # fmt: skip
    mixed = _trial({"data.corpus": "text", "data.path": "", "data.mixture": repr(mixture)}, {})
    plain = _trial({"data.corpus": "text", "data.path": "/d/c.jsonl", "data.mixture": "None"}, {})
    (row,) = data_rows([mixed, plain, plain])
    assert row[0] == "data"
    first, second = row[1].split("<br>")
    assert first == (
        "`text`, a mixture of 2 sources: web (`/d/a.jsonl`, weight 1, 25% of training "
        "documents); books (`/d/b/*.txt`, weight 3, 75% of training documents) (drawn by "
        "weight, seeded; held-out: every source's, pooled)"
    )
    assert second == "`text` from `/d/c.jsonl`"
    assert data_rows([_trial({"data.corpus": "phases"}, {})]) == []


def test_mde_column_and_the_decided_and_under_powered_paragraph(report):
    from scipy import integrate, optimize

    _, text, _ = report
    rows = {(r["medium"], r["lr_unused"]): r for r in main_rows(text)}
    base = [2.50, 2.56, 2.47]
    x = [2.40, 2.49, 2.41]
    d = [a - b for a, b in zip(x, base)]
    sd = stats.tstd(d)
    # its Holm level: the rank of its raw p among the five compared rows
    raw = sorted(
        [stats.ttest_rel(x, base).pvalue, stats.ttest_ind([2.60, 2.70], base, equal_var=False)
         .pvalue, 1.0, stats.ttest_rel([FINAL[1][s] for s in (0, 1, 2)], base).pvalue,
         stats.ttest_ind([2.60, 2.70], base, equal_var=False).pvalue]
    )  # fmt: skip
    level = 0.05 / (5 - raw.index(stats.ttest_rel(x, base).pvalue))
    crit = stats.t.ppf(1 - level / 2, 2)

    def power(delta):  # P(|Z + ncp| > crit sqrt(V / 2)), V ~ chi2(2): the t-test's power
        ncp = delta / (sd / math.sqrt(3))

        def tails(v):
            c = crit * math.sqrt(v / 2)
            return (stats.norm.sf(c - ncp) + stats.norm.cdf(-c - ncp)) * stats.chi2.pdf(v, 2)

        return integrate.quad(tails, 0, math.inf, limit=200)[0]

    mde = optimize.brentq(lambda v: power(v) - 0.8, 1e-9, 100.0)
    assert rows[("1", "1")]["MDE (80% power)"] == f"{mde:.4f}"
    assert rows[("4", "1")]["MDE (80% power)"] == "—"
    para = next(ln for ln in text.splitlines() if ln.startswith("**Decided and under-powered**"))
    assert "No comparison is decided" in para and "Under-powered: R" in para
    assert f"MDE {mde:.4g} vs |Δ| {abs(sum(d) / 3):.4g}" in para
