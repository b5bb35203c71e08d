"""`nlsweep rerun`: the recorded config rebuilt exactly, the runs a row or id names, verdicts.

The end-to-end re-run (Ray, MLflow, a row reproduced bit for bit) is in
`tests/config/test_grow.py::test_a_two_seed_sweep_grows_to_three_seeds_then_a_row_reruns`, on that
test's sweep.
"""

import pytest
import yaml

from nlsweep.config.builder import to_dict
from nlsweep.execution.rerun import RerunError, exact_spec, targets, verdict
from nlsweep.spec import load_spec
from nlsweep.tracking.read import RunData, read_sweep
from nlsweep.tracking.tags import TAG_HARDWARE, TAG_VERSIONS
from tests.helpers import NO_GPU, spec_text
from tests.spec.test_variants import VARIANTS
from tests.stores import make_store


def _recorded(spec, values):
    return {"swept": values, "config": to_dict(spec.trial_config(values))}


def test_the_recorded_config_wins_over_the_spec_as_it_is_now(write_spec):
    """A sweep run with --set and --smoke, its spec edited since: the rebuilt spec gives each
    trial exactly the recorded config, variants included."""
    path = write_spec(VARIANTS)
    then = load_spec(path, overrides=["base.optim.lr=0.01"], smoke=True, available=NO_GPU)
    rec = [_recorded(then, {"variant": v, "train.seed": 1}) for v in ("reset", "long")]
    edited = {"base/optim/lr": 5e-4, "base/train/steps": 30}
    path.write_text(spec_text(edited, base=yaml.safe_load(VARIANTS)))
    spec = exact_spec(str(path), "sqlite:///x.db", rec)
    for r in rec:
        assert to_dict(spec.trial_config(r["swept"])) == r["config"]
    long = spec.trial_config({"variant": "long", "train.seed": 1})
    assert (long.optim.lr, long.data.seq_len, long.state.mode) == (0.01, 32, "persistent")
    assert spec.base.train.steps == then.base.train.steps


def test_a_field_the_spec_cannot_rebuild_is_one_line(write_spec):
    path = write_spec(VARIANTS)
    rec = _recorded(load_spec(path, available=NO_GPU), {"variant": "long", "train.seed": 0})
    rec["config"]["state"]["mode"] = "reset"  # the variant sets it: no base override can
    with pytest.raises(RerunError, match=r"base\.state\.mode: cannot rebuild"):
        exact_spec(str(path), "sqlite:///x.db", [rec])


def _run(metrics, **tags):
    return RunData("r", "n", "FINISHED", 0, 0, {}, tags, metrics)


def test_verdict_identical_or_each_difference():
    old = _run({"val/bpc": 2.5, "val/loss": 1.7, "train/loss": 1.0}, **{TAG_HARDWARE: "cpu A"})
    same, lines = verdict(old, _run({"val/bpc": 2.5, "val/loss": 1.7, "train/loss": 9.0},
                                    **{TAG_HARDWARE: "cpu A"}))  # fmt: skip
    assert same and lines == ["reproduced: 2 final held-out metrics identical"]
    new = _run({"val/bpc": 2.5000001, "val/loss": 1.7},
               **{TAG_HARDWARE: "cpu B", TAG_VERSIONS: "torch 9"})  # fmt: skip
    same, lines = verdict(old, new)
    assert not same
    assert lines[0].startswith("val/bpc: 2.5 -> 2.5000001 (+1e-07)")
    assert "hardware: was cpu A; now cpu B" in lines
    assert "versions: was not recorded; now torch 9" in lines
    failed = RunData("r", "n", "FAILED", 0, 0, {}, {}, {})
    assert verdict(old, failed)[0] is False


def test_rows_and_run_ids_name_their_runs(tmp_path):
    uri, runs = make_store(tmp_path)
    sweep = read_sweep(uri, "synthetic")
    r1 = targets(sweep, "R1")  # the baseline row: medium=4 lr_unused=1, three seeds
    assert [r.run_id for r in r1] == [runs[(4, 1, s)] for s in (0, 1, 2)]
    one = runs[(16, 2, 1)]
    assert [r.run_id for r in targets(sweep, one[:10])] == [one]
    for bad, said in (("R7", "rows R1 to R6"), ("R0", "a report row"), ("xyz", "a report row"),
                      ("0123456789ab", "no trial run")):  # fmt: skip
        with pytest.raises(RerunError, match=said):
            targets(sweep, bad)
    uri, _ = make_store(tmp_path / "o", algorithm="optuna")
    with pytest.raises(RerunError, match="used optuna search: name a run id"):
        targets(read_sweep(uri, "synthetic"), "R1")


def test_a_run_without_its_recorded_config_is_one_line(tmp_path, capsys):
    """The synthetic runs carry no config.json: the re-run refuses before anything starts."""
    from nlsweep.cli import main

    uri, runs = make_store(tmp_path)
    assert main(["rerun", "synthetic", runs[(1, 1, 0)][:8], "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"run {runs[(1, 1, 0)][:8]} (medium=1")
    assert "no readable config.json artifact" in err[0]
