"""A sweep as a researcher meets it in the MLflow UI: a real `mlflow ui`, real headless Chromium.

    python scripts/mlflow_ui.py --tracking-uri sqlite:///mlflow.db --experiment quickstart \
        --out docs/mlflow-ui.png

Opens the runs link the sweep summary prints (`nlsweep.tracking.ui_links`) and fails (exit 1,
one line) unless the page is the experiment's training runs, the sweep's parent run is listed
with its trial runs folded under it (none of them is a top-level row), and unfolding the parent
shows every trial run in the rows right below it; and unless the compare link shows every
trial run. It writes the screenshot of the unfolded runs view. A local
store is served by an `mlflow ui` this script starts on 127.0.0.1 and stops by its PID; a
tracking server is used as it is. Needs Chromium (Debian: `apt install chromium`) and the
`playwright` package, which drives it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlsweep.tracking import LOCAL_UI, read_sweep, ui_links  # noqa: E402

RUN_NAME_CELL = "[role=gridcell][col-id='attributes.`Run Name`']"


class UiError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise UiError(f"mlflow ui exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise UiError(f"mlflow ui did not answer within 90 s; see {log}")


def _rows(page) -> dict[str, int]:
    """run id -> ag-grid row index of every run row on screen."""
    out = {}
    for cell in page.locator(RUN_NAME_CELL).all():
        href = cell.locator("a[href*='/runs/']").first.get_attribute("href") or ""
        row = cell.locator("xpath=ancestor::*[@role='row'][1]")
        out[href.rsplit("/", 1)[-1]] = int(row.get_attribute("row-index"))
    return out


def capture(uri: str, experiment: str, out: Path, chromium: str | None = None) -> dict:
    """Check the UI shows the newest sweep of `experiment` as described above and write the
    screenshot to `out`; returns what was seen. UiError names what was wrong."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise UiError("no Chromium found (Debian: apt install chromium)")
    sweep = read_sweep(uri, experiment)
    parent, children = sweep.parent.run_id, [r.run_id for r in sweep.trials]
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base = uri.rstrip("/")
            if not uri.startswith(("http://", "https://")):
                proc, base = _serve(uri, Path(tmp) / "mlflow-ui.log")
            link = ui_links(uri, sweep.experiment_id, children)[0]
            link = link.replace(LOCAL_UI, base, 1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                height = max(560, 380 + 34 * len(children))
                page = browser.new_page(viewport={"width": 1280, "height": height})
                # the assistant's side panel would cover a third of the runs table
                page.add_init_script(
                    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
                )
                page.goto(link)
                page.locator(f"a[href$='/runs/{parent}']").first.wait_for(timeout=60_000)
                opened = page.url.split("?")[0]
                if not opened.endswith(f"/experiments/{sweep.experiment_id}/runs"):
                    raise UiError(f"{link} opened {page.url}, not the experiment's runs")
                folded = _rows(page)
                flat = [c[:8] for c in children if c in folded]
                if flat:
                    raise UiError(f"trial runs {flat} are top-level rows, not under their parent")
                row = page.locator(RUN_NAME_CELL).filter(
                    has=page.locator(f"a[href$='/runs/{parent}']")
                )
                row.locator("button").first.click()  # unfold the parent's child runs
                page.locator(f"a[href$='/runs/{children[-1]}']").first.wait_for(timeout=30_000)
                page.wait_for_timeout(500)
                rows = _rows(page)
                top = rows[parent]
                below = sorted(rows.get(c, -1) for c in children)
                if below != list(range(top + 1, top + 1 + len(children))):
                    missing = [c[:8] for c in children if c not in rows]
                    raise UiError(f"trial runs not listed right under their parent {parent[:8]}"
                                  f" (missing {missing}; rows {below}, parent {top})")  # fmt: skip
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
                compare = ui_links(uri, sweep.experiment_id, children)[1].replace(LOCAL_UI, base, 1)
                page.goto(compare)
                page.get_by_text(f"Comparing {len(children)} Runs").first.wait_for(timeout=60_000)
                shown = page.inner_text("body")
                absent = [r.name for r in sweep.trials if r.name not in shown]
                if absent:
                    raise UiError(f"the compare view lacks trial runs {absent[:3]}")
                browser.close()
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    return {"parent": parent, "children": children, "link": link, "compare": compare}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument("--out", default="docs/mlflow-ui.png")
    args = ap.parse_args(argv)
    try:
        seen = capture(args.tracking_uri, args.experiment, Path(args.out))
    except UiError as e:
        print(f"mlflow ui check failed: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: parent run {seen['parent'][:8]} with its {len(seen['children'])} "
          f"trial runs listed under it at {seen['link']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
