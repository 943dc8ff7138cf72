"""Linux network namespaces standing in for hosts (used by test_netns_cluster.py, test_netns_reconfiguration.py and
test_walkthrough.py), and plain folders on loopback where namespaces cannot be made (test_walkthrough.py).

Each host is a namespace with its own loopback and one interface, ``eth0``,
with its own address on 10.77.0.0/24; the other end of its veth pair sits on
a bridge in a hub namespace, so every host reaches every other one and
nothing else (the test machine's own network is not joined to them).  Faults
are made inside these namespaces only: a partition is a set of blackhole
routes (each side drops what it sends to the other), a lost host is its
bridge port set down.  ``close`` kills every process started here and deletes
every namespace, whatever happened before.

Namespace names carry this process's id, so concurrent test runs do not
meet; ``namespaces_problem`` says why namespaces cannot be used here (not
Linux, not root, no ``ip``, or the kernel refuses), for a precise skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

SUBNET_PREFIX = "10.77.0"
COMMAND_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
HOSTS_MAX = 32  # Addresses 10.77.0.1 to .32; interface names stay under the kernel's 15 characters.


def namespaces_problem() -> str | None:
    """Why this test cannot build namespaces here, or None if it can (it tries: adds and deletes a probe)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN); this test runs as uid " \
               f"{os.geteuid()}"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"bftprobe{os.getpid()}"
    steps = [["ip", "netns", "add", probe],
             ["ip", "-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"],
             ["ip", "-n", probe, "link", "add", "probebr", "type", "bridge"]]
    try:
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            if result.returncode != 0:
                return f"the kernel refused {' '.join(step)!r}: {result.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=COMMAND_TIMEOUT_S)
    return None


class HostNetwork:
    """Namespaces named after hosts, joined by a bridge; use as a context manager (``close`` always runs)."""

    def __init__(self, hosts: Sequence[str]) -> None:
        assert 0 < len(hosts) <= HOSTS_MAX and len(set(hosts)) == len(hosts)
        self.hosts = list(hosts)
        self.prefix = f"bft{os.getpid()}"
        self.hub = f"{self.prefix}-hub"
        self._created: list[str] = []
        self._processes: list[subprocess.Popen] = []
        self._blackholes: list[tuple[str, str]] = []

    def __enter__(self) -> "HostNetwork":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exception_info) -> None:
        self.close()

    # ------------------------------------------------------------ building

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{self.hosts.index(host)}"

    def address(self, host: str) -> str:
        return f"{SUBNET_PREFIX}.{self.hosts.index(host) + 1}"

    def _create(self) -> None:
        self._add_namespace(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts):
            namespace = self.namespace(host)
            self._add_namespace(namespace)
            _ip("-n", self.hub, "link", "add", f"port{index}", "type", "veth", "peer", "name", "eth0",
                "netns", namespace)
            _ip("-n", self.hub, "link", "set", f"port{index}", "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    # ------------------------------------------------------------ running things on a host

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def run(self, host: str, argv: Sequence[str], *, timeout_s: float, **options) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` to completion (bounded by ``timeout_s``), capturing its output as text."""
        return subprocess.run(self.command(host, argv), capture_output=True, text=True, timeout=timeout_s, **options)

    def start(self, host: str, argv: Sequence[str], *, log: Path, **options) -> subprocess.Popen:
        """Start a long-running ``argv`` on ``host``, its output appended to ``log``; ``close`` stops it."""
        with open(log, "ab") as output:
            process = subprocess.Popen(self.command(host, argv), stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True, **options)
        self._processes.append(process)
        return process

    # ------------------------------------------------------------ faults

    def partition(self, side: Sequence[str], other_side: Sequence[str]) -> None:
        """Each host drops what it sends to any host of the other side (both directions: no one-way links)."""
        for sender, receivers in ((side, other_side), (other_side, side)):
            for host in sender:
                for peer in receivers:
                    _ip("-n", self.namespace(host), "route", "add", "blackhole", f"{self.address(peer)}/32")
                    self._blackholes.append((host, peer))

    def heal(self) -> None:
        """Remove every partition route."""
        while self._blackholes:
            host, peer = self._blackholes.pop()
            _ip("-n", self.namespace(host), "route", "del", "blackhole", f"{self.address(peer)}/32")

    def unplug(self, host: str) -> None:
        """The host's cable is pulled: its bridge port goes down."""
        _ip("-n", self.hub, "link", "set", f"port{self.hosts.index(host)}", "down")

    def plug(self, host: str) -> None:
        _ip("-n", self.hub, "link", "set", f"port{self.hosts.index(host)}", "up")

    # ------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Stop every process started here (SIGTERM, then SIGKILL), then delete every namespace."""
        for process in self._processes:
            stop_process(process)
        self._processes.clear()
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        self._created.clear()


class LoopbackHosts:
    """The hosts as folders on this machine, for where namespaces cannot be made: the same ``run``, ``start``
    and ``close`` as ``HostNetwork``, every process on this machine's own network (the caller moves every address
    to 127.0.0.1)."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> "LoopbackHosts":
        return self

    def __exit__(self, *exception_info) -> None:
        self.close()

    def run(self, host: str, argv: Sequence[str], *, timeout_s: float, **options) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, **options)

    def start(self, host: str, argv: Sequence[str], *, log: Path, **options) -> subprocess.Popen:
        with open(log, "ab") as output:
            process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True, **options)
        self._processes.append(process)
        return process

    def close(self) -> None:
        for process in self._processes:
            stop_process(process)
        self._processes.clear()


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``STOP_TIMEOUT_S``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


def _ip(*arguments: str) -> None:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)} failed: {result.stderr.strip()}")


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Wait until ``text`` appears in ``log``; ``AssertionError`` with the log's end if the process exits or time
    runs out."""
    deadline_s = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        tail = log.read_text(errors="replace")[-1500:]
        assert process.poll() is None, f"{log} ended (exit code {process.returncode}) before {text!r}: {tail}"
        assert time.monotonic() < deadline_s, f"no {text!r} in {log} within {timeout_s} s: {tail}"
        time.sleep(0.05)
