"""What the console says at the end of a sweep, checked against what happened: swept values
as given (1e-06 is not the control's 0), and an interrupted sweep's trials counted by what
became of them."""

from types import SimpleNamespace

from nlsweep.execution.summary import print_summary, tally
from nlsweep.spec import load_spec
from tests.helpers import NO_GPU, spec_text


def spec(write_spec):
    space = {"optim.weight_decay": {"grid": [0.0, 1.0e-6, 1.0e-5]}}
    return load_spec(write_spec(spec_text({"space": space})), available=NO_GPU)


def test_small_swept_values_are_printed_as_given(write_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = spec(write_spec)
    rows = [{"trial": f"t{i}", "weight_decay": v, "val/bpc": 1.5 + i / 3, "status": "FINISHED"}
            for i, v in enumerate([0.0, 1e-6, 1e-5])]  # fmt: skip
    lines = []
    print_summary(s, rows, None, 0, "0" * 32, out=lines.append)
    table = "\n".join(lines[:6])
    assert "1e-06" in table and "1e-05" in table and "0.0000 " not in table.split("\n", 3)[-1]
    assert "1.8333" in table  # metrics keep their 4 decimals


def test_an_interrupted_sweep_counts_each_kind_of_ending(write_spec):
    s = spec(write_spec)
    steps = s.base.train.steps

    def result(step, error=None, decay=0.0):
        return SimpleNamespace(metrics={"step": step}, error=error,
                               config={"optim": {"weight_decay": decay}})  # fmt: skip

    results = [result(steps), result(steps, decay=1e-6), result(steps // 2), result(1, "boom")]
    assert tally(s, results, planned=6) == (
        "2 finished, 1 failed, 1 stopped short, 2 not started, of 6 trials"
    )
