"""Ablation reports from the tracking store alone: trials and rows, statistics, power and the
sequential rule of adaptive seeds, markdown and CSV, figures, importance, and the
continual-learning and sanity sections. Imports neither
torch nor ray, so a report is written on any machine that reaches the store."""

from nlsweep.report.adaptive import Progress, read_progress
from nlsweep.report.power import Detectable, detectable, seeds_needed
from nlsweep.report.results import (
    Context,
    Row,
    Trial,
    build_rows,
    read_context,
    trial_table,
    trials_frame,
)
from nlsweep.report.sequential import Decision, decide, run_rounds, simulated_power, wealth
from nlsweep.report.stats import Comparison, Summary, compare, holm, summarize
from nlsweep.report.writer import write_report

__all__ = [
    "Comparison", "Context", "Decision", "Detectable", "Progress", "Row", "Summary", "Trial",
    "build_rows", "compare", "decide", "detectable", "holm", "read_context", "read_progress",
    "run_rounds", "seeds_needed", "simulated_power", "summarize", "trial_table",
    "trials_frame", "wealth", "write_report",
]  # fmt: skip
