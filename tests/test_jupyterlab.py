"""A real JupyterLab in headless Chromium (Debian's, driven by Playwright): with the server
extension enabled, the cell that was running when its kernel died shows why, before the
restart dialog."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.test_jupyter_server import serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# .ci/run installs Chromium and sets this: there a missing browser fails, not skips.
REQUIRED = os.environ.get("HEARTBEAT_REQUIRE_BROWSER") == "1"

# When each thing was first seen in the page (performance.now()), by a MutationObserver: the
# order of the cell's error output and the restart dialog, not just that both came.
WATCH = """
window.__seen = {};
new MutationObserver(() => {
  const now = performance.now();
  const errors = [...document.querySelectorAll('.jp-OutputArea-output')]
    .map((e) => e.textContent).filter((t) => t.includes('KernelDied'));
  if (errors.length && !window.__seen.notice) window.__seen.notice = [now, errors[0]];
  const dialog = document.querySelector('.jp-Dialog');
  if (dialog && dialog.textContent.includes('Restarting') && !window.__seen.dialog)
    window.__seen.dialog = [now, dialog.textContent];
}).observe(document, {childList: true, subtree: true, characterData: true});
"""

# The cell runs (its prompt says [*]), or has run and been told of its kernel's death.
RUNNING = (
    "() => window.__seen.notice || [...document.querySelectorAll('.jp-InputPrompt')]"
    ".some((p) => p.textContent.includes('*'))"
)

# Past the first-beat grace, then the kernel kills itself: nothing here signals the server's child.
CELL = "import os, signal, time\ntime.sleep(1.5)\nos.kill(os.getpid(), signal.SIGKILL)"


# JupyterLab on a machine with no network: nothing to fetch.
LAB_OFFLINE = ("--LabApp.news_url=", "--LabServerApp.extension_manager=readonly")


def write_notebook(path: Path, cell: str) -> None:
    """A notebook of one code cell, ``cell``, on the python3 kernel, at ``path``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cell)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def open_notebook(page: Any, server: Any) -> None:
    """Open the server's ``nb.ipynb`` in JupyterLab and wait until its kernel is up and idle
    (JupyterLab's status bar says so)."""
    page.goto(f"{server.base}/lab/tree/nb.ipynb?token={server.token}", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-cell", timeout=90_000)
    page.wait_for_function(
        "() => document.querySelector('.jp-Notebook-ExecutionIndicator')"
        "?.getAttribute('data-status') === 'idle'",
        timeout=90_000,
    )


def run_cell(page: Any, started: str, timeout: int) -> None:
    """Run the notebook's cell with the toolbar's run button until ``started`` (a JavaScript
    function's text) holds, ``timeout`` ms each try: on a loaded machine a first click can land
    before the toolbar acts on it, so it is clicked again, three times at most, only while the
    cell has not started (a second run would run it twice)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        page.click(".jp-Cell .jp-InputArea-editor")
        page.click("[data-command='notebook:run-cell-and-select-next']")
        try:
            page.wait_for_function(started, timeout=timeout)
            return
        except PlaywrightTimeout:
            continue


def browser_or_skip() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        if REQUIRED:
            pytest.fail(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium to run this test")
    pytest.importorskip("playwright.sync_api", reason="needs playwright from PyPI")
    pytest.importorskip("jupyterlab", reason="needs jupyterlab from PyPI")


@pytest.mark.timeout(240)
def test_jupyterlab_shows_why_the_kernel_died_in_the_running_cell(tmp_path: Path) -> None:
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    write_notebook(tmp_path / "nb.ipynb", CELL)
    lab = (
        "--HeartbeatKernelManager.time_to_dead=1",
        "--HeartbeatKernelManager.first_beat=1",
        *LAB_OFFLINE,
    )
    with (
        serve(tmp_path, *lab, extension=True, app="jupyterlab") as server,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--headless",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.add_init_script(WATCH)
            open_notebook(page, server)
            run_cell(page, RUNNING, 20_000)
            page.wait_for_function(
                "() => window.__seen.notice && window.__seen.dialog", timeout=60_000
            )
            seen = page.evaluate("window.__seen")
            page.screenshot(path=str(tmp_path / "lab.png"))
        finally:
            browser.close()
    (notice_at, notice), (dialog_at, dialog) = seen["notice"], seen["dialog"]
    assert "KernelDied: The kernel was killed by SIGKILL (9). Restarting it." in notice, notice
    assert "appears to have died" in dialog, dialog
    assert notice_at <= dialog_at, seen
