"""Every bad spec exits 2 with one line `SPEC:LINE: key: expected`, before anything starts."""

import subprocess
import sys

import pytest

from nlsweep.cli import main
from nlsweep.spec import SpecError, load_spec
from tests.helpers import GOOD_SPEC, NO_GPU, ROOT, edit

# (case id, spec text, overrides, expected line, expected key, fragment of the expectation)
CASES = [
    ("unknown top key", GOOD_SPEC + "maxconcurrent: 3\n", [], 17, "maxconcurrent", "unknown key"),
    (
        "unknown model key",
        edit("d_model: 16", "d_modl: 16"),
        [],
        6,
        "base.model.d_modl",
        "unknown key",
    ),
    (
        "wrong type",
        edit("d_model: 16", "d_model: sixteen"),
        [],
        6,
        "base.model.d_model",
        "expected an integer",
    ),
    (
        "bool for int",
        edit("steps: 8", "steps: true"),
        [],
        10,
        "base.train.steps",
        "expected an integer",
    ),
    ("bad range", edit("lr: 3.0e-3", "lr: -1.0"), [], 8, "base.optim.lr", "positive number"),
    (
        "unknown model kind",
        edit("kind: nested_lstm", "kind: gru"),
        [],
        6,
        "base.model.kind",
        "one of nested_lstm",
    ),
    (
        "cms levels",
        edit("{fast: 1, medium: 2, slow: 4}", "{fast: 1, medium: 2}"),
        [],
        7,
        "base.cms.periods",
        "one period for each of the model's levels",
    ),
    (
        "space path missing",
        edit("train.seed: {grid", "train.seeds: {grid"),
        [],
        13,
        "space.train.seeds",
        "a path into base",
    ),
    (
        "distribution type",
        edit("{grid: [1, 2]}", "{uniform: [1, 8]}"),
        [],
        12,
        "space.cms.periods.medium",
        "uniform and loguniform draw real numbers",
    ),
    (
        "grid value out of range",
        edit("{grid: [1, 2]}", "{grid: [0, 2]}"),
        [],
        12,
        "space.cms.periods.medium",
        "0 gives cms.periods.medium: a positive integer",
    ),
    (
        "grid with random search",
        edit("{algorithm: grid}", "{algorithm: random, num_samples: 4}"),
        [],
        12,
        "space.cms.periods.medium",
        "grid does not mix with random",
    ),
    (
        "random without samples",
        edit("{algorithm: grid}", "{algorithm: random}")
        .replace("{grid: [1, 2]}", "{choice: [1, 2]}")
        .replace("{grid: [0, 1]}", "{choice: [0, 1]}"),
        [],
        14,
        "search.num_samples",
        "positive number of trials",
    ),
    ("unsafe name", edit("name: tiny", "name: ../evil"), [], 1, "name", "safe folder name"),
    (
        "gpu on a machine without one",
        edit("gpu: 0", "gpu: 0.5"),
        [],
        15,
        "resources.gpu",
        "has no GPU",
    ),
    (
        "more cpus than the machine",
        edit("cpu: 1", "cpu: 64"),
        [],
        15,
        "resources.cpu",
        "at most 2 CPUs",
    ),
    (
        "unknown metric",
        edit("metric: val/bpc", "metric: val/acc"),
        [],
        3,
        "metric",
        "one of val/bpc",
    ),
    (
        "passkey length not evaluated",
        edit("metric: val/bpc", "metric: val/passkey_acc/len96").replace(
            "{corpus: pydoc, seq_len: 16, batch_size: 4}",
            "{corpus: passkey, seq_len: 16, batch_size: 4, eval_lengths: [48]}",
        ),
        [],
        3,
        "metric",
        "val/passkey_acc, val/passkey_acc/len48 (",
    ),
    ("bad mode", edit("mode: min", "mode: minimise"), [], 4, "mode", "min or max"),
    (
        "loguniform at zero",
        edit("train.seed: {grid: [0, 1]}", "optim.lr: {loguniform: [0, 0.1]}")
        .replace("{grid: [1, 2]}", "{choice: [1, 2]}")
        .replace("{algorithm: grid}", "{algorithm: optuna, num_samples: 2}"),
        [],
        13,
        "space.optim.lr",
        "lo > 0",
    ),
    (
        "reversed range",
        edit("train.seed: {grid: [0, 1]}", "optim.lr: {uniform: [0.5, 0.1]}"),
        [],
        13,
        "space.optim.lr",
        "lo < hi",
    ),
    (
        "unknown distribution",
        edit("{grid: [0, 1]}", "{normal: [0, 1]}"),
        [],
        13,
        "space.train.seed",
        "one of {grid",
    ),
    (
        "zero concurrency",
        edit("max_concurrent: 2", "max_concurrent: 0"),
        [],
        16,
        "max_concurrent",
        "positive integer",
    ),
    (
        "negative max_failures",
        GOOD_SPEC + "max_failures: -1\n",
        [],
        17,
        "max_failures",
        "non-negative integer",
    ),
    (
        "checkpoint not at an evaluation",
        edit("eval_every: 4,", "eval_every: 4, checkpoint_every: 6,"),
        [],
        10,
        "base.train.checkpoint_every",
        "a multiple of eval_every (4), got 6",
    ),
    (
        "checkpoint cadence broken by a swept eval_every",
        edit("train.seed: {grid: [0, 1]}", "train.eval_every: {grid: [4, 3]}").replace(
            "eval_every: 4,", "eval_every: 4, checkpoint_every: 8,"
        ),
        [],
        13,
        "space.train.eval_every",
        "multiple of eval_every (3)",
    ),
    (
        "surprise on a model without levels",
        edit("model: {kind: nested_lstm, d_model: 16, d_ff: 32}", "model: {kind: transformer}")
        .replace("  cms:   {periods: {fast: 1, medium: 2, slow: 4}}\n", "")
        .replace("cms.periods.medium: {grid: [1, 2]}", "optim.lr: {grid: [0.001, 0.01]}")
        + "",
        ["base.surprise.weights={fast: 0.1}"],
        "--set",
        "base.surprise.weights",
        "model kind transformer has no surprise levels",
    ),
    (
        "persistent state on a stateless model",
        edit("model: {kind: nested_lstm, d_model: 16, d_ff: 32}", "model: {kind: transformer}")
        .replace("  cms:   {periods: {fast: 1, medium: 2, slow: 4}}\n", "")
        .replace("cms.periods.medium: {grid: [1, 2]}", "optim.lr: {grid: [0.001, 0.01]}"),
        ["base.state.mode=persistent"],
        "--set",
        "base.state.mode",
        "keeps no state between batches",
    ),
    (
        "heads that do not divide the width",
        edit(
            "model: {kind: nested_lstm, d_model: 16, d_ff: 32}", "model: {kind: titans, n_heads: 3}"
        )
        .replace("  cms:   {periods: {fast: 1, medium: 2, slow: 4}}\n", "")
        .replace("cms.periods.medium: {grid: [1, 2]}", "optim.lr: {grid: [0.001, 0.01]}"),
        [],
        6,
        "base.model.n_heads",
        "a divisor of d_model (64)",
    ),
    (
        "task field on a text corpus",
        edit("corpus: pydoc,", "corpus: pydoc, num_kv_pairs: 4,"),
        [],
        9,
        "base.data.num_kv_pairs",
        "unset unless corpus is mqar",
    ),
    (
        "mqar sequence too short for its pairs",
        edit("corpus: pydoc, seq_len: 16,", "corpus: mqar, num_kv_pairs: 8, seq_len: 16,"),
        [],
        9,
        "base.data.seq_len",
        "at least 4 x num_kv_pairs = 32",
    ),
    (
        "text corpus without a path",
        edit("corpus: pydoc", "corpus: text"),
        [],
        9,
        "base.data.path",
        "a file, folder or glob",
    ),
    ("yaml syntax", edit("train: {steps: 8,", "train: {steps: 8,,"), [], 10, "yaml", "valid YAML"),
    ("not a mapping", "- just\n- a list\n", [], 1, "spec", "a mapping"),
    (
        "bad override key",
        GOOD_SPEC,
        ["base.train.stepz=5"],
        "--set",
        "base.train.stepz",
        "unknown key",
    ),
    (
        "bad override value",
        GOOD_SPEC,
        ["base.train.steps=-3"],
        "--set",
        "base.train.steps",
        "a positive integer",
    ),
    (
        "override without =",
        GOOD_SPEC,
        ["base.train.steps"],
        "--set",
        "base.train.steps",
        "KEY=VALUE",
    ),
    (
        "sampler without optuna",
        edit("{algorithm: grid}", "{algorithm: grid, sampler: cmaes}"),
        [],
        14,
        "search.sampler",
        "unset unless algorithm is optuna",
    ),
    (
        "momentum with adam",
        edit("{kind: adam, lr: 3.0e-3}", "{kind: adam, momentum: 0.9}"),
        [],
        8,
        "base.optim.momentum",
        "kind adam would ignore it",
    ),
    (
        "baseline not a factor",
        GOOD_SPEC + "baseline: {optim.lr: 0.1}\n",
        [],
        17,
        "baseline.optim.lr",
        "one of the grid factors cms.periods.medium",
    ),
    (
        "baseline value not swept",
        GOOD_SPEC + "baseline: {cms.periods.medium: 3}\n",
        [],
        17,
        "baseline.cms.periods.medium",
        "one of the swept values [1, 2]",
    ),
    (
        "asha over steps",
        edit("train.seed: {grid: [0, 1]}", "train.steps: {grid: [4, 8]}")
        + "scheduler: {kind: asha}\n",
        [],
        13,
        "space.train.steps",
        "not swept with scheduler asha",
    ),
]


@pytest.mark.parametrize(
    "text,overrides,line,key,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_spec(write_spec, text, overrides, line, key, fragment):
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=overrides, available=NO_GPU)
    e = info.value
    assert (e.line, e.key) == (line, key), str(e)
    assert fragment in e.expected
    msg = str(e)
    assert msg.startswith(f"{path}:{line}: {key}: ") and "\n" not in msg


def test_case_table_is_large():
    assert len(CASES) >= 15


def test_good_spec_is_valid(write_spec):
    spec = load_spec(write_spec(), available=NO_GPU)
    assert spec.plan.trials == 4
    assert spec.base.model.d_model == 16
    assert spec.baseline == {"cms.periods.medium": 1}  # first grid value; seeds are not factors
    spec = load_spec(
        write_spec(GOOD_SPEC + "baseline: {cms.periods.medium: 2}\n"), available=NO_GPU
    )
    assert spec.baseline == {"cms.periods.medium": 2}


def test_missing_file_is_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{tmp_path / 'nope.yaml'}:0: file: ") and "\n" not in err


def test_cli_exit_code_and_nothing_created(write_spec, tmp_path):
    """The real entry point: exit 2, one stderr line, no MLflow DB and no Ray folder."""
    bad = write_spec(edit("lr: 3.0e-3", "lr: -1.0"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_sweep.py"), str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{bad}:8: base.optim.lr: a positive number, got -1.0"
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "ray_results").exists()


def test_validate_ok(write_spec, capsys):
    assert main(["validate", str(write_spec())]) == 0
    assert "ok (4 trials, grid search)" in capsys.readouterr().out
