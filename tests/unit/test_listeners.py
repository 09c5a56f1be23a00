"""Nothing the workbench starts listens outside loopback: the private Ray instance and `make lab`'s JupyterLab.

The checker itself is tested first on sockets this test opens (one on all interfaces must be
caught, one on 127.0.0.1 must not), so a passing check below is not a vacuous one.
"""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
from listeners import assert_loopback_only, exposed, is_loopback, listeners, process_tree

REPO = Path(__file__).parents[2]


def test_the_checker_catches_a_socket_on_all_interfaces_and_passes_loopback():
    with socket.socket() as wide, socket.socket() as local, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        wide.bind(("0.0.0.0", 0))
        wide.listen()
        local.bind(("127.0.0.1", 0))
        local.listen()
        udp.bind(("0.0.0.0", 0))
        found = {(x.protocol, x.ip, x.port) for x in listeners([os.getpid()])}
        assert ("tcp", "0.0.0.0", wide.getsockname()[1]) in found
        assert ("tcp", "127.0.0.1", local.getsockname()[1]) in found
        assert ("udp", "0.0.0.0", udp.getsockname()[1]) in found
        bad = {(x.protocol, x.port) for x in exposed(listeners([os.getpid()]))}
        assert ("tcp", wide.getsockname()[1]) in bad and ("udp", udp.getsockname()[1]) in bad
        assert ("tcp", local.getsockname()[1]) not in bad
        with pytest.raises(AssertionError, match=f"0.0.0.0:{wide.getsockname()[1]}"):
            assert_loopback_only([os.getpid()], "this test")


@pytest.mark.parametrize(("ip", "loopback"), [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                              ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False),
                                              ("192.0.2.2", False), ("::ffff:192.0.2.2", False)])
def test_is_loopback(ip, loopback):
    assert is_loopback(ip) is loopback


ray = pytest.importorskip("ray", reason="Ray is the optional `distributed` extra (installed by `make test`)")
from workbench.distributed import ray_cluster  # noqa: E402


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:6379", True), ("localhost:6379", True), ("ray://127.0.0.1:10001", True), ("[::1]:6379", True),
    ("auto", False), ("10.0.0.5:6379", False), ("ray://head.example:10001", False), ("[2001:db8::1]:6379", False)])
def test_is_loopback_address(address, loopback):
    assert ray_cluster.is_loopback_address(address) is loopback


def test_a_remote_cluster_without_a_token_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.warns(UserWarning, match="'10.0.0.5:6379' although no Ray token is configured"):
        ray_cluster.check_cluster_auth("10.0.0.5:6379")
    (tmp_path / "token").write_text("abc")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ray_cluster.check_cluster_auth("10.0.0.5:6379")  # a token: no warning
        ray_cluster.check_cluster_auth("127.0.0.1:6379")  # loopback: only this machine's users can reach it
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.warns(UserWarning, match="RAY_AUTH_MODE=disabled"):
        ray_cluster.check_cluster_auth("auto")


@ray.remote
def _worker_pid():
    return os.getpid()


def _refused_with(token: str, gcs_address: str) -> subprocess.CompletedProcess:
    """Connect a fresh driver to the instance through :func:`connect` with ``token``; its exit status and output."""
    code = ("import ray, sys\nfrom workbench.common.errors import WorkbenchError\n"
            "from workbench.distributed.ray_cluster import connect\ntry:\n"
            "    with connect(ray, sys.argv[1], num_cpus=1):\n        print('CONNECTED', ray.get(ray.put(7)))\n"
            "except WorkbenchError as e:\n    print('REFUSED', e); sys.exit(3)\n")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-c", code, gcs_address], env=env, capture_output=True, text=True,
                          timeout=180)


def test_local_ray_instance_listens_on_loopback_only_and_wants_its_token(capsys):
    before = {name: os.environ.get(name) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    with ray_cluster.connect(ray, "local", num_cpus=1):
        worker = ray.get(_worker_pid.remote())  # a worker process exists, with its own gRPC server
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        pids = process_tree(os.getpid())
        assert worker in pids
        found = assert_loopback_only(pids, "the local Ray instance")
        names = {x.name for x in found}
        assert {"gcs_server", "raylet"} <= names, names  # the check saw Ray's own servers
        assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
        token = os.environ["RAY_AUTH_TOKEN"]
        gcs = ray._private.worker.global_worker.node.gcs_address
        assert ray_cluster.is_loopback_address(gcs), gcs
        with capsys.disabled():  # the listing the issue asks for, printed with -s
            print("\n" + subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout)
        wrong = _refused_with("0" * 64, gcs)
        assert wrong.returncode == 3 and "wants a token this process does not have" in wrong.stdout, wrong.stdout + wrong.stderr[-2000:]
        right = _refused_with(token, gcs)
        assert right.returncode == 0 and "CONNECTED 7" in right.stdout, right.stdout + right.stderr[-2000:]
    assert {name: os.environ.get(name) for name in before} == before  # the token does not outlive the instance


def _lab_command() -> list[str]:
    """The command the Makefile's ``lab`` target runs, with ``$(BIN)`` this virtual environment's."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lab:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no `lab:` target"
    return shlex.split(recipe.group(1).replace("$(BIN)", str(Path(sys.executable).parent)))


def test_make_lab_serves_on_loopback_with_a_token(tmp_path):
    command = _lab_command()
    assert "--ServerApp.ip=127.0.0.1" in command, command
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Only what a test needs added: a known port, no browser, root in CI, and Jupyter's
    # config/runtime folders in tmp_path, so the user's own Jupyter set-up plays no part.
    command += ["--no-browser", "--allow-root", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "run"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), IPYTHONDIR=str(tmp_path / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        status = None
        for _ in range(600):  # until it answers (no token: 403), it dies, or 5 minutes pass
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sessions", timeout=5)
                status = 200
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                time.sleep(0.5)
                continue
            break
        assert status == 403, f"JupyterLab answered {status} without a token:\n{log.read_text()[-3000:]}"
        token = re.search(r"\?token=([0-9a-f]{16,})", log.read_text())
        assert token, log.read_text()[-3000:]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/sessions",
                                         headers={"Authorization": f"token {token.group(1)}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        found = assert_loopback_only(process_tree(process.pid), "JupyterLab as `make lab` starts it")
        assert port in {x.port for x in found}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
