"""Browser-test harness: a throwaway JupyterLab on loopback, and helpers to drive a notebook.

Everything the server writes (config, runtime files, workspaces, settings, the notebook copy)
lives in a temporary folder, so a run neither reads the user's Jupyter set-up nor leaves anything
behind. A notebook test is: ``with notebook_run(browser, tmp, nb) as (page, errors)`` (JupyterLab up, the
notebook open, every cell run, no error in any output), then its own checks, with
``output_failures(page)`` and ``errors`` empty at the end, and ``publish_screenshots(names)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))  # the one listener checker, shared with the unit tests
from listeners import assert_loopback_only, process_tree  # noqa: E402

ARTIFACTS = REPO / "runs" / "test-artifacts" / "browser"  # gitignored
SCREENSHOTS = REPO / "docs" / "screenshots"  # the README's

# The "get Jupyter news?" toast and the update check would cover widgets in the screenshots and
# reach for the internet.
_DISABLED = {"@jupyterlab/apputils-extension:announcements": True}


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path

    def api(self, path: str):
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def kernel_ready(self) -> bool:
        """A session exists whose kernel is idle and has a browser connected (Run All is not lost)."""
        sessions = self.api("/api/sessions")
        return any(s["kernel"]["execution_state"] == "idle" and s["kernel"].get("connections", 0) > 0
                   for s in sessions)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(workdir: Path, notebooks: list[Path], startup_timeout: float = 90):
    """Start ``jupyter lab`` on 127.0.0.1 with a random token; yield a :class:`Lab`; stop it."""
    root = workdir / "root"
    root.mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy(notebook, root / notebook.name)
    config = workdir / "config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": _DISABLED}))
    # Draw every cell: with windowing, cells scrolled out of view are left unrendered, and their
    # widgets would be missing from the DOM the test inspects.
    tracker = workdir / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    # recordTiming: each cell's metadata keeps when it started and ended (run_all reports them).
    tracker.write_text(json.dumps({"windowingMode": "none", "recordTiming": True}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
               JUPYTER_DATA_DIR=str(workdir / "data"), IPYTHONDIR=str(workdir / "ipython"),
               JUPYTER_PLATFORM_DIRS="1", PYTHONUNBUFFERED="1")
    token, port = secrets.token_hex(16), _free_port()
    log = workdir / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",  # CI runs as root
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={workdir / 'workspaces'}", f"--LabApp.user_settings_dir={workdir / 'settings'}",
        # Lets the test call JupyterLab commands (Run All) instead of clicking through menus.
        "--LabApp.expose_app_in_browser=True",
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                lab.api("/api/status")
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"jupyter lab did not answer within {startup_timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        # Reachable from this machine only (tests/unit/listeners.py): the server now, and after
        # the test its kernels too (their ZeroMQ ports).
        assert_loopback_only(process_tree(process.pid), "the browser tests' JupyterLab")
        yield lab
        assert_loopback_only(process_tree(process.pid), "the browser tests' JupyterLab and its kernels")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Text that means a cell or a widget failed, as it appears inside outputs (not in the console).
FAILURE_TEXT = ("Traceback (most recent call last)", "Error displaying widget", "Failed to load model class",
                "Model not found", "Error: ")


def wait_for(predicate, timeout: float, what: str, page=None, step: float = 0.5, on_timeout: Path | None = None):
    """Poll ``predicate`` until truthy; on timeout save a full-page screenshot to ``on_timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if page is not None and on_timeout is not None:
                on_timeout.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(on_timeout), full_page=True)
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        if page is not None:
            page.wait_for_timeout(step * 1000)
        else:
            time.sleep(step)


def open_notebook(browser, lab: Lab, name: str, viewport=(1400, 2200)):
    """Open ``name`` in a new page; return the page and the list that collects JavaScript errors."""
    errors: list[str] = []
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
    return page, errors


def cell_prompts(page) -> list[str]:
    return page.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()


def run_all(page, lab: Lab, timeout: float = 420, on_timeout: Path | None = None, idle_limit: float = 60) -> None:
    """Run every cell once the kernel is really there, and wait until each shows ``[n]:``.

    Fails early, with what the page shows, when Run All has stopped short: an error in an
    output, or the kernel idle for ``idle_limit`` s with cells still unrun (a dead kernel, or a
    cancelled run). On any failure the cells' prompts, their recorded run times, the kernel's
    state and the server log's tail are in the message.
    """
    wait_for(lab.kernel_ready, 60, "the notebook's kernel (idle, with a connection)", page, on_timeout=on_timeout)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    idle_since: list[float] = []

    def finished() -> bool:
        prompts = [p.strip() for p in cell_prompts(page)]
        if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return True
        failures = output_failures(page)
        if failures:
            _stopped(page, lab, on_timeout, f"an error in an output:\n{failures[0][-3000:]}")
        idle = not any(s["kernel"]["execution_state"] != "idle" for s in lab.api("/api/sessions"))
        if not idle or "[*]:" in prompts:
            idle_since.clear()
        elif not idle_since:
            idle_since.append(time.monotonic())
        elif time.monotonic() - idle_since[0] > idle_limit:
            _stopped(page, lab, on_timeout, f"the kernel idle for {idle_limit:.0f} s with cells not run")
        return False

    try:
        wait_for(finished, timeout, "Run All to finish", page, step=1, on_timeout=on_timeout)
    except TimeoutError as error:
        raise TimeoutError(f"{error}\n{_run_state(page, lab)}") from None


def cell_timings(page) -> list[dict]:
    """Per code cell of the open notebook: its prompt and the seconds it ran (recordTiming)."""
    return page.evaluate("""() => {
        const panel = window.jupyterapp.shell.currentWidget;
        const cells = panel && panel.content ? panel.content.widgets : [];
        return cells.filter(c => c.model.type === 'code').map((c, i) => {
            const t = c.model.getMetadata('execution') || {};
            const start = Date.parse(t['shell.execute_reply.started'] || t['iopub.execute_input'] || '');
            const end = Date.parse(t['shell.execute_reply'] || '');
            return {cell: i, source: c.model.sharedModel.getSource().slice(0, 60),
                    seconds: isNaN(start) || isNaN(end) ? null : (end - start) / 1000};
        });
    }""")


def _run_state(page, lab: Lab) -> str:
    try:
        sessions = [s["kernel"]["execution_state"] for s in lab.api("/api/sessions")]
    except OSError as error:  # the server itself gone
        sessions = f"unknown ({error})"
    prompts = [p.strip() for p in cell_prompts(page)]
    timings = [f"  {t['cell']}: {t['seconds']} s  {t['source']!r}" for t in cell_timings(page)]
    log = lab.log.read_text(errors="replace")[-2000:] if lab.log.is_file() else ""
    return (f"kernel: {sessions}; prompts: {prompts}\ncell run times:\n" + "\n".join(timings)
            + f"\nserver log (tail):\n{log}")


def _stopped(page, lab: Lab, on_timeout: Path | None, why: str):
    if on_timeout is not None:
        on_timeout.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(on_timeout), full_page=True)
    raise AssertionError(f"Run All stopped: {why}\n{_run_state(page, lab)}")


def output_failures(page) -> list[str]:
    """Outputs that show a Python traceback, an error or a widget that failed to load."""
    outputs = page.locator(".jp-OutputArea-output").all_text_contents()
    return [o for o in outputs if any(f in o for f in FAILURE_TEXT)]


def screenshot(page, locator, path: Path) -> None:
    """Screenshot one element, scrolled to the top of the notebook panel."""
    # The notebook panel scrolls, not the page: at its top, JupyterLab's menu and toolbar do not
    # cover the element (the default viewport is tall enough for a whole widget).
    locator.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    path.parent.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(path))


def set_slider_readout(page, slider, value: str) -> None:
    """Type ``value`` into an ipywidgets slider's readout and press Enter (what a user can do)."""
    slider.locator(".widget-readout").click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def click_heatmap_cell(plot, row: int, column: int, n_rows: int, n_columns: int) -> None:
    """Click the centre of a heatmap cell in a plotly plot (row 0 at the top, as with a reversed y axis).

    Plotly takes clicks on the plot area's drag layer and turns them into ``plotly_click`` for the
    point under the mouse, which is how a ``FigureWidget``'s ``on_click`` callbacks are reached.
    """
    area = plot.locator(".nsewdrag").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    if box is None:
        raise AssertionError("the heatmap has no plot area to click")
    x = box["x"] + (column + 0.5) * box["width"] / n_columns
    y = box["y"] + (row + 0.5) * box["height"] / n_rows
    plot.page.mouse.move(x, y)  # plotly finds the point on hover, then reports it on click
    plot.page.wait_for_timeout(200)
    plot.page.mouse.click(x, y)


_CLIPPED_JS = """root => {
    const out = [];
    const parts = '.js-plotly-plot .main-svg, .gtitle, .colorbar, .legend, .xtick text, .ytick text';
    for (const el of root.querySelectorAll(parts)) {
        const r = el.getBoundingClientRect();
        if (r.width === 0 && r.height === 0) continue;
        for (let a = el.parentElement; a && a !== root.parentElement; a = a.parentElement) {
            const s = getComputedStyle(a);
            if (s.overflowX === 'visible' && s.overflowY === 'visible') continue;
            const b = a.getBoundingClientRect();
            if (r.left < b.left - 1 || r.right > b.right + 1 || r.top < b.top - 1 || r.bottom > b.bottom + 1) {
                out.push(`${el.getAttribute('class')} "${(el.textContent || '').slice(0, 40)}" cut off by `
                         + `<${a.tagName.toLowerCase()} class="${a.getAttribute('class')}">`);
                break;
            }
        }
    }
    return out;
}"""


def clipped_parts(widget) -> list[str]:
    """Plot parts (figure, title, colour bar, legend, tick labels) that an element with hidden
    overflow cuts off inside ``widget``: the SVG itself, or a box narrower than the figure."""
    return widget.evaluate(_CLIPPED_JS)


@contextlib.contextmanager
def notebook_run(browser, workdir: Path, notebook: Path, on_timeout: Path):
    """JupyterLab with ``notebook`` open in a page and every cell run without an error in any
    output; yields ``(page, console_errors)``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with jupyterlab(workdir, [notebook]) as lab:
        page, console_errors = open_notebook(browser, lab, notebook.name)
        run_all(page, lab, on_timeout=on_timeout)
        assert not output_failures(page), f"errors in outputs: {output_failures(page)}"
        yield page, console_errors


def plot_title(plot) -> str:
    """The title text of a plotly plot in the page."""
    return plot.locator(".gtitle").first.text_content() or ""


def publish_screenshots(names) -> None:
    """With WORKBENCH_UPDATE_SCREENSHOTS=1, copy ``ARTIFACTS/<name>.png`` over the README's."""
    if os.environ.get("WORKBENCH_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(ARTIFACTS / f"{name}.png", SCREENSHOTS / f"{name}.png")
