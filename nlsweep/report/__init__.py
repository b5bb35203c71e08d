"""Ablation reports from the tracking store alone: trials and rows, statistics, markdown and
CSV, figures, importance, and the continual-learning and sanity sections. Imports neither
torch nor ray, so a report is written on any machine that reaches the store."""

from nlsweep.report.results import (
    Context,
    Row,
    Trial,
    build_rows,
    read_context,
    trial_table,
    trials_frame,
)
from nlsweep.report.stats import Comparison, Summary, compare, holm, summarize
from nlsweep.report.writer import write_report

__all__ = [
    "Comparison", "Context", "Row", "Summary", "Trial", "build_rows", "compare", "holm",
    "read_context", "summarize", "trial_table", "trials_frame", "write_report",
]  # fmt: skip
