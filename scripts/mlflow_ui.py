"""A sweep as a researcher meets it in the MLflow UI: a real `mlflow ui`, real headless Chromium.

    python scripts/mlflow_ui.py --tracking-uri sqlite:///mlflow.db --experiment quickstart \
        --out docs/mlflow-ui.png

Opens the three links the sweep summary prints (`nlsweep.tracking.ui_links`) and fails (exit 1,
one line) unless
- the runs link opens the experiment's runs in the sweep's view (`nlsweep.tracking.view`):
  every trial run a row, best objective first, the objective and the parent's best-so-far
  as columns holding the stored values;
- the charts link leads with the objective's chart and a parallel-coordinates chart of the
  swept values against it, then the best so far, and draws every run;
- the compare link lists every trial run that reported the objective, and its
  parallel-coordinates plot starts on the objective.
It writes screenshots of the runs table (`--out`) and of the charts (`-charts` before the
suffix). A local store is served by an `mlflow ui` this script starts on 127.0.0.1 and stops
by its PID; a tracking server is used as it is. Needs Chromium (Debian: `apt install
chromium`) and the `playwright` package, which drives it.
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

from nlsweep.tracking import LOCAL_UI, best_key, read_sweep, ui_links  # noqa: E402

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


def _cell(page, row: int, column: str) -> str:
    """The text of a table cell (ag-grid splits each row across its pinned and scrolled
    parts, which share the row index)."""
    cell = page.locator(f"[role=row][row-index='{row}'] [role=gridcell][col-id='{column}']")
    return cell.first.inner_text(timeout=10_000).strip()


def _same(shown: str, value: float) -> bool:
    try:
        return abs(float(shown) - value) <= 5e-4 * max(1.0, abs(value))  # the UI rounds
    except ValueError:
        return False


def _check_table(page, sweep, metric: str, mode: str) -> None:
    """Every trial a row, ordered best first; the objective and best-so-far columns (the
    caller has waited for the parent's row)."""
    parent = sweep.parent.run_id
    if "viewing a shared view" not in page.inner_text("body"):
        raise UiError("the runs link did not open the sweep's view (no shared-view banner)")
    rows = _rows(page)
    missing = [t.name for t in sweep.trials if t.run_id not in rows]
    if missing:
        raise UiError(f"trial runs {missing[:3]} are not rows of the first screen")
    scored = [t for t in sweep.trials if metric in t.metrics]
    order = [t.metrics[metric] for t in sorted(scored, key=lambda t: rows[t.run_id])]
    if order != sorted(order, reverse=mode == "max"):
        raise UiError(f"the rows are not ordered by {metric}, best first: {order}")
    for t in scored:
        shown = _cell(page, rows[t.run_id], f"metrics.`{metric}`")
        if not _same(shown, t.metrics[metric]):
            raise UiError(f"{t.name}: the {metric} column shows {shown!r}, stored "
                          f"{t.metrics[metric]}")  # fmt: skip
    best = sweep.parent.metrics.get(best_key(metric))
    if best is not None:
        shown = _cell(page, rows[parent], f"metrics.`{best_key(metric)}`")
        if not _same(shown, best):
            raise UiError(f"the parent's {best_key(metric)} column shows {shown!r}, not {best}")


def _check_charts(page, sweep, metric: str) -> None:
    """The objective's charts first, then the best so far; every run drawn."""
    cards = page.locator("[data-testid='experiment-view-compare-runs-card'] h4")
    cards.first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    titles = [c.get_attribute("title") or c.inner_text() for c in cards.all()]
    lead = [metric, "Parallel Coordinates"]
    if sweep.parent.metrics.get(best_key(metric)) is not None:
        lead.append(best_key(metric))
    if titles[: len(lead)] != lead:
        raise UiError(f"the charts open on {titles[:3]}, not {lead}")
    text = page.inner_text("body")
    drawn, hidden = text.count("Hide run"), text.count("Show run")
    if hidden or drawn < len(sweep.trials) + 1:
        raise UiError(f"the charts draw {drawn} runs and hide {hidden}, not all "
                      f"{len(sweep.trials) + 1}")  # fmt: skip


def _check_compare(page, shown: list, metric: str) -> None:
    page.get_by_text(f"Comparing {len(shown)} Runs").first.wait_for(timeout=60_000)
    text = page.inner_text("body")
    absent = [r.name for r in shown if r.name not in text]
    if absent:
        raise UiError(f"the compare view lacks trial runs {absent[:3]}")
    picker = page.get_by_text("Metrics:", exact=True).locator("xpath=following-sibling::*[1]")
    chosen = picker.first.inner_text().strip()
    if chosen != metric:
        raise UiError(f"the compare view's parallel-coordinates plot starts on {chosen!r}, "
                      f"not {metric}")  # fmt: skip


def capture(uri: str, experiment: str, out: Path, chromium: str | None = None) -> dict:
    """Check the UI shows the newest sweep of `experiment` as described above and write the
    screenshots; returns what was seen. UiError names what was wrong."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise UiError("no Chromium found (Debian: apt install chromium)")
    sweep = read_sweep(uri, experiment)
    metric, mode = sweep.parent.params["metric"], sweep.parent.params["mode"]
    parent, children = sweep.parent.run_id, [r.run_id for r in sweep.trials]
    scored = [r for r in sweep.trials if metric in r.metrics]
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base = uri.rstrip("/")
            if not uri.startswith(("http://", "https://")):
                proc, base = _serve(uri, Path(tmp) / "mlflow-ui.log")
            links = ui_links(uri, sweep.experiment_id, [r.run_id for r in scored])
            link, charts, compare = (x.replace(LOCAL_UI, base, 1) for x in links)
            with sync_playwright() as p:
                flags = ["--no-sandbox", "--disable-dev-shm-usage"]
                browser = p.chromium.launch(executable_path=chromium, args=flags)
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
                _check_table(page, sweep, metric, mode)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
                page.set_viewport_size({"width": 1280, "height": max(height, 1100)})
                page.goto(charts)  # MLflow draws only the chart cards in view
                _check_charts(page, sweep, metric)
                page.wait_for_timeout(4000)  # the charts fetch their histories
                page.screenshot(path=str(out.with_name(f"{out.stem}-charts{out.suffix}")))
                page.goto(compare)
                _check_compare(page, scored, metric)
                browser.close()
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    return {"parent": parent, "children": children, "link": link, "charts": charts,
            "compare": compare}  # fmt: skip


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
    print(f"{args.out}: the {len(seen['children'])} trial runs of parent run "
          f"{seen['parent'][:8]}, best first, at {seen['link']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
