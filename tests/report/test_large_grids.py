"""A grid of hundreds of rows keeps a readable report: the markdown and the learning curves
show the baseline and the best rows, table.csv every row."""

import math
from types import SimpleNamespace

from nlsweep.report.render import MAX_CURVES, MAX_ROWS, shown_rows


def rows(means, baseline=0):
    return [SimpleNamespace(summary=SimpleNamespace(mean=m), is_baseline=i == baseline)
            for i, m in enumerate(means)]  # fmt: skip


def test_small_grids_show_every_row():
    r = rows([3.0, 1.0, 2.0])
    assert shown_rows(r, "min", MAX_ROWS) == [0, 1, 2]


def test_large_grids_show_the_baseline_and_the_best_rows_in_row_order():
    means = [float((i * 37) % 878) for i in range(878)]
    means[5] = math.nan  # a row whose trials all failed ranks last
    r = rows(means, baseline=3)
    shown = shown_rows(r, "min", MAX_ROWS)
    best = sorted((m, i) for i, m in enumerate(means) if not math.isnan(m))[:MAX_ROWS]
    assert shown == sorted({i for _, i in best} | {3})
    assert 5 not in shown and len(shown) == MAX_ROWS + 1
    top = shown_rows(r, "max", MAX_CURVES)
    assert max(means[i] for i in top if i != 3) == max(m for m in means if not math.isnan(m))
    assert len(top) == MAX_CURVES + 1
