"""A real JupyterLab in headless Chromium: the cell a kernel is stuck in shows that the kernel
does not answer, and where it is stuck, while it still runs; after an interrupt it ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_jupyter_server import serve
from tests.test_jupyterlab import (
    CHROMIUM,
    LAB_OFFLINE,
    browser_or_skip,
    open_notebook,
    run_cell,
    write_notebook,
)

CELL = "x = 1\nimport ctypes; ctypes.PyDLL(None).pause()"

NOTICE = (
    "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
    ".map((e) => e.textContent).find((t) => t.includes('KernelUnresponsive'))"
)
# Still running ([*]) when the notice shows; done (a number) after the interrupt.
PROMPT = "() => document.querySelector('.jp-InputPrompt')?.textContent"


@pytest.mark.timeout(240)
def test_jupyterlab_shows_a_stuck_cell_where_its_kernel_is_stuck(tmp_path: Path) -> None:
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    write_notebook(tmp_path / "nb.ipynb", CELL)
    lab = (
        "--HeartbeatKernelManager.unresponsive_after=3",
        *LAB_OFFLINE,
    )
    with (
        serve(tmp_path, *lab, extension=True, app="jupyterlab") as server,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            open_notebook(page, server)
            run_cell(page, NOTICE, 30_000)
            notice = page.evaluate(NOTICE)
            prompt_then = page.evaluate(PROMPT)
            page.screenshot(path=str(tmp_path / "lab.png"))
            (kernel,) = server.api("GET", "/api/kernels")
            server.api("POST", f"/api/kernels/{kernel['id']}/interrupt")
            page.wait_for_function(f"() => !({PROMPT})().includes('*')", timeout=60_000)
        finally:
            browser.close()
    assert notice is not None, "no notice in the cell"
    assert "KernelUnresponsive: the kernel has not answered for" in notice, notice
    assert "main thread at cell:2 in <module>" in notice, notice
    assert "*" in prompt_then, prompt_then  # told while it still ran
