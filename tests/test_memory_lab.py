"""A real JupyterLab in headless Chromium, its server (and so its kernels) in a memory cgroup of
the test's: the running cell that grows its kernel's memory shows the memory warning while it
runs, then, the kernel killed by the out-of-memory killer, why it died with how much it used."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_deaths import joiner
from tests.test_jupyter_server import serve
from tests.test_jupyterlab import (
    CHROMIUM,
    LAB_OFFLINE,
    browser_or_skip,
    open_notebook,
    run_cell,
    write_notebook,
)
from tests.test_memory_server import GROW, memory_cgroup
from tests.test_server_deaths import SETTINGS

# JupyterLab's server is ~150 MiB, an idle ipykernel ~60 MiB: GROW (80 MiB/s) takes the kernel
# to this limit in ~3 s. No ballast: the kernel is the larger, and the victim, either way.
LIMIT = 400 << 20
# Warned at 0.8 of it, not the default 0.9: 80 MiB (1 s of GROW) from the warning to the kill,
# time enough for the server's readings on a loaded machine (0.9: 40 MiB, one reading late and
# the kill comes first).
WARNING = "--HeartbeatKernelManager.memory_warning=0.8"

# When each notice was first seen in the cell's output area (performance.now()), with its text
# and whether the cell still ran then ([*]): the order the user saw them in, not just that both
# came. Its stderr is where the warning is; its error output where the death notice is.
WATCH = """
window.__seen = {};
new MutationObserver(() => {
  const now = performance.now();
  const outputs = [...document.querySelectorAll('.jp-Cell .jp-OutputArea-output')]
    .map((e) => e.textContent);
  const running = [...document.querySelectorAll('.jp-InputPrompt')]
    .some((p) => p.textContent.includes('*'));
  const warning = outputs.find((t) => t.includes('KernelMemory'));
  if (warning && !window.__seen.warning) window.__seen.warning = [now, warning, running];
  const notice = outputs.find((t) => t.includes('KernelDied'));
  if (notice && !window.__seen.notice) window.__seen.notice = [now, notice, outputs];
  if (running && !window.__seen.running) window.__seen.running = [now];
  const dialog = document.querySelector('.jp-Dialog');
  if (dialog && dialog.textContent.includes('Restarting') && !window.__seen.dialog)
    window.__seen.dialog = [now, dialog.textContent];
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


def grow_in_lab(tmp_path: Path, *, extension: bool = True) -> tuple[dict[str, Any], str]:
    """Run GROW in JupyterLab, its server in a LIMIT memory cgroup, until its kernel dies (with
    and without ``extension``). What the page saw (:data:`WATCH`) and
    the server's log."""
    from playwright.sync_api import sync_playwright

    write_notebook(tmp_path / "nb.ipynb", GROW)
    with (
        memory_cgroup(LIMIT) as group,
        serve(
            tmp_path,
            *SETTINGS,
            WARNING,
            *LAB_OFFLINE,
            extension=extension,
            app="jupyterlab",
            preexec_fn=joiner(group),
        ) as server,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            page.add_init_script(WATCH)
            open_notebook(page, server)
            # Started: running, or already dead (a second run would grow the restarted kernel).
            run_cell(page, "() => window.__seen.running || window.__seen.dialog", 30_000)
            # Until its kernel's death is shown: the restart dialog (and ours, the notice).
            done = "window.__seen.dialog" + (" && window.__seen.notice" if extension else "")
            page.wait_for_function(f"() => {done}", timeout=90_000)
            seen = page.evaluate("window.__seen")
            page.screenshot(path=str(tmp_path / "lab.png"))
        finally:
            browser.close()
    return seen, server.log.read_text(errors="replace")


@pytest.mark.timeout(240)
def test_jupyterlab_shows_the_memory_warning_in_the_running_cell_then_its_oom_death(
    tmp_path: Path,
) -> None:
    browser_or_skip()
    seen, log = grow_in_lab(tmp_path)
    assert "warning" in seen, f"no memory warning in the cell: {seen}"
    (warned_at, warning, running), (died_at, notice, outputs) = seen["warning"], seen["notice"]
    # The warning, in the cell's output area while it still ran, with what was read: past
    # memory_warning (0.8) of the limit, short of it (read before the kill).
    found = re.search(
        r"KernelMemory: This kernel's memory cgroup uses ([\d.]+) MiB of its 400.0 MiB limit; "
        r"at the limit the largest kernel is killed by the out-of-memory killer\.",
        warning,
    )
    assert found, warning
    assert 0.8 * 400 <= float(found.group(1)) < 400, warning
    assert running, seen
    # Then its death: the out-of-memory killer named (by the cgroup's record or the kernel
    # log, whichever this machine gives), with the peak read and the limit.
    found = re.search(
        r"KernelDied: The kernel was killed by SIGKILL \(9\)(: its memory cgroup recorded an "
        r"out-of-memory kill|, out of memory: the kernel log names it as the out-of-memory "
        r"killer's victim|, likely out of memory: .* share that cgroup): this kernel used at "
        r"least ([\d.]+) MiB at its peak; its cgroup's limit is 400.0 MiB, shared with 1 other "
        r"process\. Restarting it\.",
        notice,
    )
    assert found, notice
    # More than an idle kernel (~60 MiB): its growth was read, up to near what the server left.
    assert 100 < float(found.group(2)) < 400, notice
    # Once each, in that order, in the page as in the server's log.
    assert warned_at <= died_at, seen
    assert sum("KernelMemory" in t for t in outputs) == 1, outputs
    ours = [line for line in log.splitlines() if "(memory_warning)" in line or " died: " in line]
    assert len(ours) == 2 and "(memory_warning)" in ours[0], ours
