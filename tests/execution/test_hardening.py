"""Hostile or unlucky input: one line and exit 2 before Ray or MLflow start, bounded cost, no
code from storage, one driver per experiment, one creator of a fresh SQLite store."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from nlsweep.cli import main
from nlsweep.execution.lock import ExperimentLock
from nlsweep.spec import load_spec
from nlsweep.tracking.config import absolute_uri
from tests.helpers import GOOD_SPEC, NO_GPU, ROOT, edit, nothing_started, one_line, spec_text
from tests.servers import tool

LAUGHS = 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9)
)


@pytest.mark.parametrize("where", ["description", "name"])
def test_alias_bombs_cost_nothing(write_spec, capsys, where):
    spec = write_spec(LAUGHS + GOOD_SPEC.replace(f"{where}:", f"{where}: *a8\nold_{where}:", 1))
    t0 = time.perf_counter()
    assert main(["validate", str(spec)]) == 2
    assert time.perf_counter() - t0 < 2.0
    err = one_line(capsys)
    assert err.startswith(f"{spec}:1: yaml: no anchors or aliases"), err


def test_alias_in_an_override_is_refused(write_spec, capsys):
    assert main(["validate", str(write_spec()), "--set", "description=&x [1, *x]"]) == 2
    assert ":--set: yaml: no anchors or aliases" in one_line(capsys)


def test_no_error_prints_more_than_a_few_hundred_characters(write_spec, capsys):
    huge = "x" * 200_000
    for spec in (
        write_spec(spec_text({"name": huge})),
        write_spec(spec_text({"base/model/kind": huge})),
        write_spec(spec_text({f"space/{huge}": {"grid": [0, 1]}}, drop=("space/train.seed",))),
    ):
        assert main(["validate", str(spec)]) == 2
        err = one_line(capsys)
        assert len(err) < 400 + len(str(spec)), len(err)


def test_spec_that_is_not_utf8_is_one_line(tmp_path, capsys):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes(GOOD_SPEC.replace("a test sweep", "caf\xe9").encode("latin-1"))
    assert main(["validate", str(spec)]) == 2
    assert one_line(capsys) == f"{spec}:2: file: UTF-8 text (byte 0xe9 at offset 27)"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("base.optim.lr=.inf", "base.optim.lr: expected a finite number"),
        ("base.optim.lr=.nan", "base.optim.lr: expected a finite number"),
        ("base.optim.lr=1.0e+400", "base.optim.lr: expected a finite number"),
        ("base.train.steps=100000000000000000000000", "base.train.steps: expected an integer of"),
        ("base.train.steps=1e23", "base.train.steps: expected an integer"),
        ("base.train.seed=1099511627776", "base.train.seed: an integer in [0, 2^32)"),
        ("space.optim.lr={loguniform: [1.0e-4, .inf]}", "space.optim.lr"),
    ],
)
def test_absurd_numbers_are_refused(write_spec, capsys, override, fragment):
    assert main(["validate", str(write_spec()), "--set", override]) == 2
    err = one_line(capsys)
    assert ":--set: " in err and fragment in err, err


TEXT_SPEC = edit(
    "{corpus: pydoc, seq_len: 16, batch_size: 4}",
    "{corpus: text, path: CORPUS, seq_len: 16, batch_size: 4}",
)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50, "not UTF-8 text (byte 0x89 at offset 0)"),
        (b"text\x00with a NUL" * 50, "binary (NUL bytes at offset 4)"),
        (b"", "empty"),
        (b"  \n\n ", "empty"),
        (b"short text, " * 10, "data.seq_len: at most 2 so that the held-out split"),
    ],
)
def test_unusable_corpus_is_one_line_before_anything_starts(
    tmp_path, monkeypatch, capsys, content, fragment
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    spec = tmp_path / "spec.yaml"
    spec.write_text(TEXT_SPEC.replace("CORPUS", str(corpus)))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(spec)]) == 2
    err = one_line(capsys)
    assert err.startswith(f"{spec}:9: base.data: ") and fragment in err, err
    nothing_started(tmp_path)


def test_swept_seq_len_too_long_for_the_corpus_is_found_first(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to train on, and some more. " * 60)  # 2280 chars, 228 held out
    spec = tmp_path / "spec.yaml"
    text = {"corpus": "text", "path": str(corpus), "seq_len": 16, "batch_size": 4}
    changes = {"base/data": text, "space/data.seq_len": {"grid": [16, 64]}}
    spec.write_text(spec_text(changes, drop=("space/train.seed",)))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(spec)]) == 2
    assert "data.seq_len: at most 56 so that the held-out split" in one_line(capsys)
    nothing_started(tmp_path)


def test_data_path_that_does_not_hold_the_named_corpus_is_refused(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"base/data/corpus": "tinyshakespeare",
                               "base/data/path": str(tmp_path / "nowhere")}))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(spec)]) == 2
    err = one_line(capsys)
    assert f"data.path: {tmp_path / 'nowhere'} has no input.txt" in err, err
    nothing_started(tmp_path)


def test_report_name_cannot_leave_reports(tmp_path, monkeypatch, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["report", "../../x", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "neither a spec file nor an experiment name" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


def _black_hole():
    """A server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(sock.accept()) for _ in range(16)],
                     daemon=True).start()  # fmt: skip
    return sock


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_report_against_a_dead_server_is_one_line_within_30_s(
    tmp_path, monkeypatch, capsys, server
):
    if server == "refused":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    else:
        hole = _black_hole()
        port = hole.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    t0 = time.perf_counter()
    assert main(["report", "tiny", "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert time.perf_counter() - t0 < 30
    assert f"tracking_uri http://127.0.0.1:{port}: unreachable" in one_line(capsys)
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
        ("sqlite:///runs/m.db?timeout=5", "sqlite:///{cwd}/runs/m.db?timeout=5"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("http://host:5000", "http://host:5000"),
        ("databricks", "{cwd}/databricks"),
        ("file:./mlruns", "file:./mlruns"),
    ],
)
def test_relative_tracking_uri_is_made_absolute(tmp_path, monkeypatch, uri, expected):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri(uri) == expected.format(cwd=tmp_path)


def test_spec_records_the_absolute_store(write_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(), available=NO_GPU)
    assert spec.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and spec.tracking_uri_relative
    given = load_spec(write_spec(), available=NO_GPU, tracking_uri="sqlite:///x.db")
    assert given.tracking_uri == f"sqlite:///{tmp_path}/x.db"
    assert not given.tracking_uri_relative  # asked for on the command line: never replaced


def test_a_fresh_sqlite_store_is_created_once_by_racing_processes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    go = tmp_path / "go"
    code = (
        "import os, time, sys\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "from nlsweep.tracking.store import Tracker\n"
        f"t = Tracker({uri!r}); t.check(); t.experiment('race' + sys.argv[1]); print('ok')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(4)
    ]  # fmt: skip
    time.sleep(4.0)  # every process has imported mlflow and waits
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]


def test_one_driver_per_experiment(tmp_path):
    first = ExperimentLock(str(tmp_path), "tiny").acquire()
    with pytest.raises(Exception, match=rf"pid {os.getpid()} on .*lock {tmp_path}/tiny.lock"):
        ExperimentLock(str(tmp_path), "tiny").acquire()
    ExperimentLock(str(tmp_path), "other").acquire().release()  # another sweep: free
    first.release()
    ExperimentLock(str(tmp_path), "tiny").acquire().release()


def test_a_killed_drivers_lock_is_not_stale(tmp_path):
    code = (
        "import sys, time\nfrom nlsweep.execution.lock import ExperimentLock\n"
        f"ExperimentLock({str(tmp_path)!r}, 'tiny').acquire(); print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"pid {proc.pid} on"):
        ExperimentLock(str(tmp_path), "tiny").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ExperimentLock(str(tmp_path), "tiny").acquire().release()


def test_second_driver_is_refused_before_anything_starts(write_spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    held = ExperimentLock(str(tmp_path / "ray_results"), "tiny").acquire()
    try:
        assert main(["run", str(write_spec())]) == 2
    finally:
        held.release()
    err = one_line(capsys)
    assert "another driver is running this sweep" in err and f"pid {os.getpid()}" in err
    assert not ray.is_initialized()
    assert not (tmp_path / "ray_results" / "tiny").exists()


def test_refusal_counts_trials_without_unpickling(tmp_path, write_spec, monkeypatch, capsys):
    """The refusal (no --resume, no --restart) reads Tune's state as JSON only."""
    from ray.tune.utils.serialization import TuneFunctionEncoder

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    exp = tmp_path / "ray_results" / "tiny"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"not read")
    trial = json.dumps({"status": "TERMINATED", "x": Boom()}, cls=TuneFunctionEncoder)
    state = {"trial_data": [[trial, "{}"]], "runner_data": {}}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_spec())]) == 2
    assert "1 of 4 trials finished" in one_line(capsys)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_newest_checkpoint_falls_back_to_the_older_one(write_spec, tmp_path, monkeypatch):
    from ray import tune

    from nlsweep.execution.runlog import FALLBACK
    from nlsweep.execution.trainable import _train
    from nlsweep.training import checkpoint
    from nlsweep.training.trainer import Trainer

    monkeypatch.setattr(ray, "get_gpu_ids", list)  # it would start a Ray instance here
    spec = load_spec(write_spec(), available=NO_GPU)
    trial = tmp_path / "run_trial_0"
    first = Trainer(spec.base)
    for _ in first.run():
        if first.step == 4:
            break
    (trial / "checkpoint_000000").mkdir(parents=True)
    checkpoint.save(first, trial / "checkpoint_000000")
    (trial / "checkpoint_000001").mkdir()
    (trial / "checkpoint_000001" / checkpoint.CHECKPOINT_FILE).write_bytes(b"\x80\x02truncated")
    newest = tune.Checkpoint.from_directory(str(trial / "checkpoint_000001"))

    reports = []
    resumed = Trainer(spec.base)
    _train(resumed, spec, newest, lambda m, checkpoint=None: reports.append(m), tune.Checkpoint)
    assert [int(m["step"]) for m in reports] == [8]  # continued from step 4, not from 0
    note = reports[0][FALLBACK]
    assert (
        note.startswith("checkpoint_000001 unreadable (")
        and "restored checkpoint_000000 (step 4)" in note
    )

    straight = Trainer(spec.base)
    final = list(straight.run())[-1]
    assert reports[-1]["val/bpc"] == final["val/bpc"]

    (trial / "checkpoint_000000" / checkpoint.CHECKPOINT_FILE).write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint_000001"):
        _train(Trainer(spec.base), spec, newest, lambda m, checkpoint=None: None, tune.Checkpoint)


def test_a_recorded_checkpoint_deleted_by_retention_resumes_from_the_next_kept_one(tmp_path):
    """Tune deletes beyond num_to_keep before it saves the state that names the newer one: a
    driver killed in between leaves a record of a deleted checkpoint (the CI failure this
    guards against: every retry of that trial failed). The oldest later one is the record."""
    import pyarrow.fs

    from nlsweep.execution.trainable import kept_successor
    from nlsweep.training import checkpoint

    fs = pyarrow.fs.LocalFileSystem()
    trial = tmp_path / "run_trial_0"
    for name in ("checkpoint_000001", "checkpoint_000002", "checkpoint_000003"):
        (trial / name).mkdir(parents=True)
        (trial / name / checkpoint.CHECKPOINT_FILE).write_bytes(b"")
    (trial / "checkpoint_000010.tmp").write_text("")  # not a folder: never chosen
    assert kept_successor(fs, str(trial / "checkpoint_000000")) == str(trial / "checkpoint_000001")
    assert kept_successor(fs, str(trial / "checkpoint_000002")) is None  # still there
    assert kept_successor(fs, str(trial / "checkpoint_000004")) is None  # nothing later
    assert kept_successor(fs, str(tmp_path / "gone" / "checkpoint_000000")) is None
    # What S3 left in CI: the recorded folder still listed, its file gone (a deletion cut
    # short by the kill); and a later folder without its file (an upload never registered).
    (trial / "checkpoint_000002" / checkpoint.CHECKPOINT_FILE).unlink()
    assert kept_successor(fs, str(trial / "checkpoint_000002")) == str(trial / "checkpoint_000003")
    (trial / "checkpoint_000005").mkdir()
    assert kept_successor(fs, str(trial / "checkpoint_000004")) is None


class Payload:
    """Unpickling it runs a shell command: what a hostile storage writer would plant."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


@pytest.mark.slow
def test_resume_runs_no_code_from_storage(write_spec, tmp_path, monkeypatch, capsys):
    import ray.cloudpickle as cloudpickle
    from ray.tune.utils.serialization import TuneFunctionEncoder

    from nlsweep.execution.seal import kept_dir
    from nlsweep.tracking.store import Tracker
    from nlsweep.tracking.tags import TAG_ROLE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NLSWEEP_STATE", str(tmp_path / "state"))
    spec = write_spec(spec_text({"space/train.seed": {"grid": [0]}}))
    assert main(["run", str(spec)]) == 0
    capsys.readouterr()
    exp = tmp_path / "ray_results" / "tiny"
    flag = tmp_path / "pwned"
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def parent_status():
        runs = tracker.runs("tiny")
        return [r.info.status for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]

    assert parent_status() == ["FINISHED"]
    state = sorted(exp.glob("experiment_state-*.json"))[-1]
    tampered = {
        "tuner.pkl": cloudpickle.dumps(Payload(flag)),
        state.name: json.dumps(
            {"trial_data": [[json.dumps({"x": Payload(flag)}, cls=TuneFunctionEncoder), "{}"]]}
        ).encode(),
        "callback-states-2030-01-01_00-00-00.pkl": cloudpickle.dumps(Payload(flag)),
    }
    truncated = {
        "tuner.pkl": (exp / "tuner.pkl").read_bytes()[:100],
        state.name: state.read_bytes()[:1000],
    }
    for name, data in truncated.items():  # an upload cut short: written back whole
        target = exp / name
        original = target.read_bytes()
        target.write_bytes(data)
        assert main(["run", str(spec), "--resume"]) == 0, name
        said = capsys.readouterr().out
        assert f"{exp}/{name}: cut short (its upload was interrupted); wrote back " in said
        assert target.read_bytes() == original and not flag.exists()
    kept_dir(str(exp)).rename(tmp_path / "kept")  # a resume elsewhere: no copy to write back
    for name, data in [*tampered.items(), *truncated.items()]:  # one file at a time
        target = exp / name
        original = target.read_bytes() if target.exists() else None
        target.write_bytes(data)
        assert main(["run", str(spec), "--resume"]) == 2, name
        err = one_line(capsys)
        what = "not written by this sweep" if original is None else "truncated or replaced"
        assert err.startswith(f"{exp}/{name}: {what} (sha256 "), err
        assert "resume runs no code from storage it cannot vouch for" in err
        assert not flag.exists() and parent_status() == ["FINISHED"]
        if original is None:
            target.unlink()
        else:
            target.write_bytes(original)
    # The store emptied (a 0-byte file reads as a new SQLite store, which MLflow would fill
    # with empty tables): said as such, not as a parent run missing from some other store.
    db = tmp_path / "mlflow.db"
    kept = db.read_bytes()
    db.write_bytes(b"")
    assert main(["run", str(spec), "--resume"]) == 2
    err = one_line(capsys)
    assert err.startswith(f"{exp}: its tracking store {db} is empty (0 bytes): it lost "), err
    assert db.stat().st_size == 0  # untouched: MLflow made no tables in it
    db.write_bytes(kept)
    assert main(["run", str(spec), "--resume"]) == 0  # every file as the sweep wrote it
    assert not flag.exists()


LOCAL_RAY = """
import json, sys, time
from nlsweep.api import prefer_loopback
prefer_loopback()
import psutil, ray
from nlsweep.execution.cluster import start_ray
start_ray()
ray.get(ray.remote(lambda: 1).remote())
if sys.argv[1] == "wait":  # a process started after the instance was recorded (as Ray's
    import subprocess       # agents may be on a loaded machine) is stopped all the same
    subprocess.Popen(["sleep", "600"])
    time.sleep(3)
me = psutil.Process()
procs = [me, *me.children(recursive=True)]
listening = set()
for p in procs:
    try:
        listening |= {c.laddr.ip for c in p.net_connections("inet") if c.status == "LISTEN"}
    except psutil.Error:
        pass
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "listening": sorted(listening),
                  "children": [p.pid for p in procs[1:]]}), flush=True)
if sys.argv[1] == "wait":
    time.sleep(600)
ray.shutdown()
"""
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def local_ray(state: Path, mode: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["NLSWEEP_STATE"] = str(state)
    return subprocess.Popen([sys.executable, "-c", LOCAL_RAY, mode], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def report_of(proc: subprocess.Popen) -> dict:
    """The script's JSON line; the lines before it are kept in `proc.said`."""
    proc.said = []
    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
        proc.said.append(line)
    pytest.fail(proc.stderr.read()[-2000:])


def alive(pids) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_local_sweep_starts_its_own_ray_on_loopback_beside_a_ray_start(tmp_path):
    """`ray start` on the same machine (recorded in /tmp/ray/ray_current_cluster) neither
    captures a local sweep's Ray nor breaks it; that Ray listens on loopback only."""
    current = Path("/tmp/ray/ray_current_cluster")
    had = current.exists()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    head = subprocess.Popen(
        [*tool("ray"), "start", "--head", f"--port={port}", "--num-cpus=1", "--block",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        end = time.time() + 90
        while not (current.exists() and current.read_text().strip().endswith(f":{port}")):
            assert time.time() < end and head.poll() is None, "ray start did not come up"
            time.sleep(0.5)
        proc = local_ray(tmp_path, "exit")
        seen = report_of(proc)
        assert proc.wait(timeout=120) == 0
        assert not seen["gcs"].endswith(f":{port}")  # its own instance
        assert set(seen["listening"]) <= LOOPBACK, seen["listening"]
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        if not had:
            current.unlink(missing_ok=True)


@pytest.mark.slow
def test_leftovers_of_a_killed_driver_are_stopped_by_the_next_run(tmp_path, monkeypatch):
    from nlsweep.execution.cluster import stop_leftovers

    running = local_ray(tmp_path, "wait")  # another sweep, alive: never touched
    try:
        theirs = report_of(running)["children"]
        killed = local_ray(tmp_path, "wait")
        children = report_of(killed)["children"]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        time.sleep(3)
        survivors = alive(children)
        assert survivors  # Ray's agents outlive a SIGKILLed driver
        check_next_run_stops(tmp_path, survivors, theirs)
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait(timeout=30)
    time.sleep(3)
    monkeypatch.setenv("NLSWEEP_STATE", str(tmp_path))
    assert stop_leftovers() >= 1
    time.sleep(1)
    assert alive(theirs) == []


def check_next_run_stops(tmp_path, survivors, theirs):
    nxt = local_ray(tmp_path, "exit")
    report_of(nxt)
    assert nxt.wait(timeout=120) == 0
    assert any(line.startswith("stopped ") for line in nxt.said), nxt.said
    time.sleep(1)
    assert alive(survivors) == []
    assert alive(theirs) == theirs


def test_an_address_where_nothing_answers_is_one_line(write_spec, tmp_path, monkeypatch, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.chdir(tmp_path)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        monkeypatch.setenv("RAY_ADDRESS", address)
        t0 = time.perf_counter()
        assert main(["run", str(write_spec())]) == 2
        assert time.perf_counter() - t0 < 15  # Ray alone retries such an address for minutes
        err = one_line(capsys)
        assert err.startswith(f"RAY_ADDRESS={address}: cannot connect (nothing answers"), err
        assert not ray.is_initialized()


def test_resume_from_another_folder_uses_the_recorded_store(write_spec, tmp_path, monkeypatch):
    from nlsweep.execution.experiment import Marker, write_marker
    from nlsweep.execution.preflight import adopt_tracking_uri

    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir(), other.mkdir()
    storage = tmp_path / "ray"
    write_marker(str(storage / "tiny"), Marker("r1", f"sqlite:///{first}/mlflow.db", "fp", "s"))
    (storage / "tiny" / "tuner.pkl").write_bytes(b"")
    monkeypatch.chdir(other)
    spec = load_spec(write_spec(), available=NO_GPU, storage=str(storage))
    assert spec.tracking_uri == f"sqlite:///{other}/mlflow.db"
    said = []
    adopt_tracking_uri(spec, resume=True, out=said.append)
    assert spec.tracking_uri == f"sqlite:///{first}/mlflow.db" and said
    given = load_spec(write_spec(), available=NO_GPU, storage=str(storage),
                      tracking_uri=f"sqlite:///{other}/m.db")  # fmt: skip
    adopt_tracking_uri(given, resume=True, out=said.append)
    assert given.tracking_uri == f"sqlite:///{other}/m.db"  # an explicit store is kept


def test_object_store_lock_heartbeat_and_staleness(tmp_path, monkeypatch):
    from tests.servers import make_bucket, start_moto, stop_group

    moto, env = start_moto(tmp_path)
    try:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        make_bucket(env, "locks")
        first = ExperimentLock("s3://locks/sweeps", "tiny").acquire()
        with pytest.raises(Exception, match=rf"pid {os.getpid()} on .*s3://locks/sweeps/tiny.lock"):
            ExperimentLock("s3://locks/sweeps", "tiny").acquire()
        first.release()  # deletes its object
        ExperimentLock("s3://locks/sweeps", "tiny").acquire().release()

        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri("s3://locks/sweeps/tiny.lock")
        now = time.time()
        for holder in (
            {"host": "elsewhere", "pid": 1, "since": now - 999, "beat": now - 999},  # silent
            {"host": socket.gethostname(), "pid": dead.pid, "since": now, "beat": now},  # dead
        ):
            with fs.open_output_stream(root) as f:
                f.write(json.dumps({**holder, "token": "old"}).encode())
            ExperimentLock("s3://locks/sweeps", "tiny").acquire().release()  # stale: taken over
        with fs.open_output_stream(root) as f:  # alive elsewhere, beating: refused
            f.write(json.dumps({"host": "elsewhere", "pid": 1, "since": now, "beat": now}).encode())
        with pytest.raises(Exception, match="another driver is running this sweep"):
            ExperimentLock("s3://locks/sweeps", "tiny").acquire()
    finally:
        stop_group(moto)


def test_seal_records_this_sweeps_tuner_state_over_an_earlier_one(tmp_path, monkeypatch):
    """Tune's first save records tuner.pkl even when an earlier experiment at the same path
    (before a --restart, or a store reused under the same URI) recorded another one."""
    from nlsweep.execution.seal import Seal, digest, read_local

    monkeypatch.setenv("NLSWEEP_STATE", str(tmp_path / "state"))
    exp, staging = tmp_path / "ray" / "tiny", tmp_path / "staging"
    exp.mkdir(parents=True), staging.mkdir()
    (exp / "tuner.pkl").write_bytes(b"earlier sweep")
    Seal(f"sqlite:///{tmp_path / 'm.db'}", "run", str(exp)).add_folder(str(staging))
    (exp / "tuner.pkl").write_bytes(b"this sweep")
    (staging / "experiment_state-x.json").write_bytes(b"{}")
    Seal(f"sqlite:///{tmp_path / 'm.db'}", "run", str(exp)).add_folder(str(staging))
    record = read_local(str(exp))
    assert record["tuner.pkl"][0] == digest(b"this sweep")
    assert record["experiment_state-x.json"] == [digest(b"{}")]


def test_a_file_cut_short_is_written_back_whole_from_this_machines_record(tmp_path, monkeypatch):
    """Tune's upload is a plain copy: a driver killed during one leaves the file cut short
    in storage. Resume writes back the whole version this machine kept, and only where the
    file is the beginning of one; anything else, or no copy kept, is refused as before."""
    from nlsweep.execution.experiment import ExperimentError
    from nlsweep.execution.seal import KEEP, Seal, digest, kept_dir, verify

    class Store:  # the tracking store, away: only the local record vouches
        def tags(self, run_id):
            raise OSError("away")

    monkeypatch.setenv("NLSWEEP_STATE", str(tmp_path / "state"))
    exp, staging = tmp_path / "ray" / "tiny", tmp_path / "staging"
    exp.mkdir(parents=True), staging.mkdir()
    seal = Seal(f"sqlite:///{tmp_path / 'm.db'}", "run", str(exp))
    (exp / "tuner.pkl").write_bytes(b"tuner")
    versions = [bytes([65 + i]) * (100 + i) for i in range(KEEP + 1)]
    for v in versions:  # Tune's saves: staged, recorded, then uploaded
        (staging / "searcher-state.pkl").write_bytes(v)
        seal.add_folder(str(staging))
        (exp / "searcher-state.pkl").write_bytes(v)
    # only the recorded versions' contents are kept
    assert sorted(p.name for p in kept_dir(str(exp)).iterdir()) == sorted(
        digest(v) for v in [b"tuner", *versions[1:]]
    )
    state = exp / "searcher-state.pkl"
    for cut in (b"", versions[-2][:57], versions[-1][:99]):
        state.write_bytes(cut)
        assert verify(str(exp), Store(), "run") == ["searcher-state.pkl"]
        whole = versions[-1] if cut[:1] != b"C" else versions[-2]  # the one it began
        assert state.read_bytes() == whole
        assert verify(str(exp), Store(), "run") == []  # as recorded now
    for bad in (versions[0][:50], versions[-1] + b"x", b"D" * 40 + b"E"):
        state.write_bytes(bad)  # an unrecorded version's beginning, longer, or changed
        with pytest.raises(ExperimentError, match="searcher-state.pkl: truncated or replaced"):
            verify(str(exp), Store(), "run")
        assert state.read_bytes() == bad  # untouched
    state.write_bytes(versions[-1][:10])
    for f in kept_dir(str(exp)).iterdir():  # another machine: digests, no contents
        f.unlink()
    with pytest.raises(ExperimentError, match="searcher-state.pkl: truncated or replaced"):
        verify(str(exp), Store(), "run")
