"""Real servers for the cluster tests, started and stopped by the tests on 127.0.0.1: Ray nodes
(`ray start --block`, each in its own process group, stopped by killing that group: never
`ray stop`), an `mlflow server` with an artifact root, and moto's S3-compatible server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers import ROOT

TOKEN = "nlsweep-test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url}: no answer in {seconds} s")


def stop_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)


def environment_sites() -> list[str]:
    """The site folders the running interpreter assembled its packages from, in its order:
    a system Python's, a virtualenv's (and its base's, with --system-site-packages), a conda
    env's or a uv env's, and the user site where it is on."""
    sites = list(site.getsitepackages())
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and os.path.isdir(user):
        sites.append(user)
    return [s for s in sites if os.path.isdir(s)]


def worker_python(folder: Path) -> str:
    """A Python for the cluster's nodes that has every declared dependency but not nlsweep,
    as on a node where only the dependencies were installed: a bare venv whose one `.pth`
    adds the running environment's site folders (with their own `.pth` files, as `site`
    does), and whose `sitecustomize` then drops the editable-install finder. A venv made
    with --system-site-packages would see the base interpreter's packages instead, which
    lack everything when pytest itself runs in a virtualenv."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    py = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    adds = "; ".join(f"site.addsitedir({s!r})" for s in environment_sites())
    Path(purelib, "_nlsweep_test_env.pth").write_text(f"import site; {adds}\n")
    # sitecustomize runs after every .pth file, so the finder is gone before any import.
    Path(purelib, "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if '__editable__' not in getattr(f, '__module__', '')]\n"
        f"sys.path[:] = [p for p in sys.path if p.rstrip('/') != {str(ROOT)!r}]\n"
    )
    check = subprocess.run(
        [str(py), "-c", "import ray, torch, mlflow; import nlsweep"],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    last = (check.stderr.strip().splitlines() or [""])[-1]
    if "No module named 'nlsweep'" not in last:
        raise RuntimeError(f"{py}: the nodes' Python must have ray, torch and mlflow but not "
                           f"nlsweep; importing them gave: {last or 'no error'}")  # fmt: skip
    return str(py)


def tool(name: str) -> list[str]:
    """The command for one of the dependencies' programs in the running environment, whether
    or not its bin folder is on PATH (a virtualenv used without activating it)."""
    modules = {"mlflow": "mlflow", "ray": "ray.scripts.scripts", "moto_server": "moto.server"}
    return [sys.executable, "-m", modules[name]]


def node_env(token_file: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    env.update(RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_USAGE_STATS_ENABLED="0")
    # A lost node is noticed in seconds, not the default half minute.
    env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    env.update(RAY_health_check_initial_delay_ms="1000")
    env.update(extra or {})
    return env


class RayNodes:
    """A multi-node Ray cluster on this machine, one `ray start --block` process group per node."""

    def __init__(self, python: str, folder: Path):
        self.python = python
        self.folder = folder
        self.token = folder / "token"
        self.token.write_text(TOKEN)
        self.temp = Path("/tmp") / f"nlr{os.getpid()}{time.monotonic_ns() % 100000}"
        self.gcs_port, self.client_port = free_port(), free_port()
        self.nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def driver_env(self) -> dict:
        env = node_env(self.token)
        env.pop("RAY_ADDRESS", None)
        return env

    def add(self, command: list[str]) -> subprocess.Popen:
        """`ray ARGS` (a `ray start` command as the README gives it) as one more node, with
        what a test needs on top: blocking, 127.0.0.1, ports of its own, a small object store."""
        head = "--head" in command
        args = [self.python, "-m", "ray.scripts.scripts", *command, "--block",
                "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                "--object-store-memory=150000000",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                # Worker ports below the kernel's ephemeral range (where free_port() draws)
                f"--min-worker-port={20000 + 1000 * len(self.nodes)}",
                f"--max-worker-port={20999 + 1000 * len(self.nodes)}"]  # fmt: skip
        if head:
            args += ["--include-dashboard=false", f"--temp-dir={self.temp}"]
        log = open(self.folder / f"node{len(self.nodes)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            args, env=node_env(self.token), cwd=self.folder, start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.nodes.append(proc)
        return proc

    def join(self, command: list[str], tries: int = 2) -> subprocess.Popen:
        """Add a node and wait until the cluster counts it (a node that starts while the
        machine is busy can time out registering: it is started again)."""
        for attempt in range(tries):
            proc = self.add(command)
            try:
                self.wait_nodes(sum(p.poll() is None for p in self.nodes), 60)
                return proc
            except RuntimeError:
                stop_group(proc)
                self.nodes.remove(proc)
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def wait_nodes(self, n: int, seconds: float = 90) -> None:
        """Until `n` nodes are alive (asked through a subprocess driver: no Ray in pytest)."""
        code = (
            f"import ray; ray.init(address='{self.address}', logging_level='ERROR');"
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                out = subprocess.run(
                    [sys.executable, "-c", code], env=self.driver_env(), cwd=self.folder,
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                continue
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {n} nodes in {seconds} s")

    def group_of(self, pid: int) -> subprocess.Popen | None:
        """The node that runs `pid`: Ray's workers start sessions of their own, so walk up
        to the raylet, which is in its node's process group."""
        groups = {p.pid: p for p in self.nodes}
        for _ in range(10):
            try:
                pgid = os.getpgid(pid)
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (ProcessLookupError, OSError):
                return None
            if pgid in groups:
                return groups[pgid]
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent
            if pid <= 1:
                return None
        return None

    def shutdown(self) -> None:
        for p in reversed(self.nodes):
            stop_group(p)
        shutil.rmtree(self.temp, ignore_errors=True)


def start_mlflow(
    folder: Path, port: int | None = None, command: list[str] | None = None, env=None
) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 (the given command, else a SQLite store and a proxied
    artifact folder under `folder`), answering /health."""
    folder.mkdir(parents=True, exist_ok=True)
    if command is None:
        port = port or free_port()
        command = [*tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                   "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                   "--artifacts-destination", str(folder / "artifacts")]  # fmt: skip
    if command[0] == "mlflow":  # as the README writes it: this environment's mlflow
        command = [*tool("mlflow"), *command[1:]]
    port = int(command[command.index("--port") + 1])
    log = open(folder / f"server-{port}.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(
        [*command, "--workers", "1"], cwd=folder, start_new_session=True, stdout=log,
        stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", 90, proc)
    return proc, url


def start_moto(folder: Path) -> tuple[subprocess.Popen, dict]:
    """moto's S3 server and the environment that points pyarrow (and so Ray) at it."""
    port = free_port()
    log = open(folder / "moto.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [*tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], cwd=folder,
        start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/moto-api/", 30, proc)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    return proc, env


def make_bucket(env: dict, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)  # fmt: skip


def run_cli(args: list[str], env: dict, cwd: Path, timeout: float = 400):
    """`nlsweep ARGS` as a user runs it (the installed entry point's module)."""
    return subprocess.run(
        [sys.executable, "-m", "nlsweep", *args], env={**env, "PYTHONPATH": str(ROOT)},
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
