"""Which sockets a process tree listens on, and whether any of them is reachable from the network.

Used by the tests of everything the workbench starts that listens: the private Ray instance
(tests/unit/test_listeners.py), JupyterLab as ``make lab`` starts it, and the browser tests'
JupyterLab server (tests/browser/lab.py).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

import psutil


class Listener(NamedTuple):
    pid: int
    name: str  # the process's name (``gcs_server``, ``raylet``, ``python`` ...)
    protocol: str  # "tcp" or "udp"
    ip: str
    port: int


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (still alive now)."""
    root = psutil.Process(pid)
    return [root.pid] + [child.pid for child in root.children(recursive=True)]


def listeners(pids) -> list[Listener]:
    """Every listening TCP socket and every bound, unconnected UDP socket of the processes ``pids``."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            name, connections = process.name(), process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a worker that exited meanwhile listens on nothing
        for c in connections:
            tcp = c.type == socket.SOCK_STREAM
            if (tcp and c.status == psutil.CONN_LISTEN) or (not tcp and not c.raddr):
                found.append(Listener(pid, name, "tcp" if tcp else "udp", c.laddr.ip, c.laddr.port))
    return found


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (``::ffff:127.0.0.1``)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def exposed(found: list[Listener]) -> list[Listener]:
    """The listeners bound to an address other hosts can reach (all interfaces included)."""
    return [listener for listener in found if not is_loopback(listener.ip)]


def assert_loopback_only(pids, what: str) -> list[Listener]:
    """Fail, naming each socket, if ``pids`` listen anywhere but loopback; return their listeners."""
    found = listeners(pids)
    bad = exposed(found)
    assert not bad, f"{what} listens outside loopback: " + ", ".join(
        f"{b.name}[{b.pid}] {b.protocol} {b.ip}:{b.port}" for b in bad)
    return found
