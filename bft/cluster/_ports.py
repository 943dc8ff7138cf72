"""Can a replica listen where its cluster file says, and if not, who holds the port?

``bft up`` and ``bft replica`` check every port before anything starts, so a
port taken by another program (another cluster initialised on the same
machine, say) is one sentence naming the port and, where Linux's ``/proc``
tells, the process that holds it, instead of a replica that dies at start-up.
The owner lookup is best effort: it reads ``/proc/net/tcp`` and ``tcp6`` for
the listening socket's inode, then the file descriptors of the processes this
user may inspect, within fixed bounds.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from ._file import Address

PROCESSES_SCANNED_MAX = 10_000
DESCRIPTORS_SCANNED_MAX = 100_000
TCP_LISTEN_STATE = "0A"
PROC_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def listen_problem(address: Address) -> str | None:
    """Why nothing can listen on ``address`` now (one sentence), or None if a listener could bind it.

    The probe binds as trio's listeners do (``SO_REUSEADDR``), so connections of a replica that just
    stopped, lingering in TIME_WAIT, do not count as the port being in use.
    """
    host, port = address
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            probe.listen(1)
    except socket.gaierror as error:
        return f"cannot listen on {host}:{port}: the host is not known here ({error.strerror})"
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return port_in_use_sentence(address)
        return f"cannot listen on {host}:{port} ({error.strerror or error})"
    return None


def port_in_use_sentence(address: Address) -> str:
    host, port = address
    owner = port_owner(port)
    held_by = f"by {owner}" if owner else "by another program (its owner could not be found)"
    return f"port {port} on {host} is already in use {held_by}"


def port_owner(port: int) -> str | None:
    """``"pid N (name)"`` of a process listening on TCP ``port``, or None if it cannot be found."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in _process_ids():
        if _holds_any(pid, wanted):
            return f"pid {pid} ({_process_name(pid)})"
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in PROC_TCP_TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN_STATE and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def _process_ids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())[:PROCESSES_SCANNED_MAX]


def _holds_any(pid: int, wanted: set[str]) -> bool:
    directory = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(directory)[:DESCRIPTORS_SCANNED_MAX]
    except OSError:
        return False  # Gone, or another user's process.
    for descriptor in descriptors:
        try:
            if os.readlink(f"{directory}/{descriptor}") in wanted:
                return True
        except OSError:
            continue
    return False


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "unknown"
    except OSError:
        return "unknown"
