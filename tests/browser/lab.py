"""A throwaway JupyterLab server on loopback for browser tests.

Everything it writes (config, runtime files, workspaces, settings, the notebook copy) lives in a
temporary folder, so a run neither reads the user's Jupyter set-up nor leaves anything behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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
    tracker.write_text(json.dumps({"windowingMode": "none"}))
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
        yield lab
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
