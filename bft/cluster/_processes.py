"""Run a cluster's replicas as local OS processes: start, stop, kill, pause, resume, restart.

``LocalProcessCluster`` is what ``bft up`` / ``bft down`` use, and what the
benchmark and the harness's real-process mode reuse to inject crashes
(``kill``: SIGKILL), stalls (``pause``/``resume``: SIGSTOP/SIGCONT) and
restarts against real processes.  Typical use::

    cluster = LocalProcessCluster("run/cluster.toml")
    cluster.start_all()
    cluster.wait_listening()          # raises ReplicaProcessError naming the replica that failed
    ...
    cluster.kill(0)                   # the primary of view 0 crashes
    cluster.restart(0)                # and comes back from its SQLite database
    cluster.stop_all()

Each replica runs ``python -m bft replica --config FILE --id I`` in its own
session (so a terminal's Ctrl-C or the parent's exit does not reach it), with
stdin from /dev/null and stdout and stderr appended to
``LOG_DIRECTORY/replica-I.log``.  Its pid is recorded in
``RUN_DIRECTORY/replica-I.pid`` together with the process's start time, so a
later ``bft down`` (another process) finds it, and a pid the kernel has since
given to an unrelated process is recognised as stale instead of signalled.
By default both folders sit next to the cluster file (``logs/`` and ``run/``).

Every wait is bounded.  Operations are idempotent: starting a running replica
or stopping a stopped one reports that and changes nothing.  Each returns a
small record saying what it actually did, so callers can be honest about it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ._file import Address, ClusterFile, ConfigFileError, format_address, load_cluster_file

POLL_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 5.0
LISTEN_TIMEOUT_S = 20.0
CONNECT_PROBE_TIMEOUT_S = 0.5
LOG_TAIL_BYTES = 2000
STOPPED_STATES = ("T", "t")  # Stopped by a signal; stopped by a tracer.


class ReplicaProcessError(Exception):
    """A replica process could not be started, did not come up, or is not there to signal (one sentence)."""


class PortInUseError(ReplicaProcessError):
    """A port a replica needs is taken (one sentence naming the port and, where known, its owner)."""


@dataclass(frozen=True, slots=True)
class StartResult:
    replica_id: int
    pid: int
    already_running: bool  # True: nothing was started, ``pid`` is the process found running.


@dataclass(frozen=True, slots=True)
class StopResult:
    replica_id: int
    pid: int | None        # None when no process was running.
    outcome: str           # "not-running", "terminated" (exited after SIGTERM) or "killed" (SIGKILL).
    exit_code: int | None  # Known only for processes this object started (it reaps them).
    waited_s: float

    OUTCOMES = ("not-running", "terminated", "killed")

    def __post_init__(self) -> None:
        assert self.outcome in self.OUTCOMES, self.outcome
        assert (self.pid is None) == (self.outcome == "not-running")


@dataclass(frozen=True, slots=True)
class _PidRecord:
    pid: int
    start_ticks: int | None  # The kernel's start time of the process (Linux), to tell a reused pid.


class LocalProcessCluster:
    """The replica processes of one cluster file on this machine.

    ``listen_addresses`` ({replica: (host, port)}) and ``peer_addresses``
    ({replica: {peer: (host, port)}}) are passed to ``bft replica`` as
    ``--listen`` and ``--peer``, so a harness can route links through a proxy.
    ``wait_listening`` probes each replica's listen address.  ``replica_programs``
    ({replica: arguments after the interpreter}) runs another program in place of
    ``-m bft replica`` for those replicas (a test harness's Byzantine replica); it
    gets the same ``--config``, ``--id``, ``--listen`` and ``--peer`` arguments.
    """

    def __init__(self, cluster_path: str | os.PathLike, *, run_directory: str | os.PathLike | None = None,
                 log_directory: str | os.PathLike | None = None, python: str = sys.executable,
                 listen_addresses: Mapping[int, Address] | None = None,
                 peer_addresses: Mapping[int, Mapping[int, Address]] | None = None,
                 environment: Mapping[str, str] | None = None,
                 replica_programs: Mapping[int, Sequence[str]] | None = None) -> None:
        self.cluster: ClusterFile = load_cluster_file(cluster_path)
        base = self.cluster.path.parent
        self.run_directory = Path(run_directory) if run_directory is not None else base / "run"
        self.log_directory = Path(log_directory) if log_directory is not None else base / "logs"
        self.python = python
        self.listen_addresses = dict(listen_addresses or {})
        self.peer_addresses = {replica: dict(peers) for replica, peers in (peer_addresses or {}).items()}
        self.environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(environment or {})}
        self.replica_programs = {replica: list(program) for replica, program in (replica_programs or {}).items()}
        self._children: dict[int, subprocess.Popen] = {}
        for replica_id in (*self.listen_addresses, *self.peer_addresses, *self.replica_programs):
            self.cluster.replica(replica_id)  # Raises ConfigFileError for an unknown replica.

    # ------------------------------------------------------------ where things are

    @property
    def replica_ids(self) -> range:
        return range(self.cluster.config.replica_count)

    def log_path(self, replica_id: int) -> Path:
        return self.log_directory / f"replica-{replica_id}.log"

    def pid_path(self, replica_id: int) -> Path:
        return self.run_directory / f"replica-{replica_id}.pid"

    def listen_address(self, replica_id: int) -> Address:
        return self.listen_addresses.get(replica_id, self.cluster.replica(replica_id).listen_address)

    def command(self, replica_id: int) -> list[str]:
        """The command line that runs replica ``replica_id``."""
        program = self.replica_programs.get(replica_id, ["-m", "bft", "replica"])
        command = [self.python, *program, "--config", str(self.cluster.path), "--id", str(replica_id)]
        if replica_id in self.listen_addresses:
            command += ["--listen", format_address(self.listen_addresses[replica_id])]
        for peer, address in sorted(self.peer_addresses.get(replica_id, {}).items()):
            command += ["--peer", f"{peer}={format_address(address)}"]
        return command

    # ------------------------------------------------------------ looking

    def pid(self, replica_id: int) -> int | None:
        """The pid of replica ``replica_id``'s running process, or None (a stale pid file is removed)."""
        record = self._read_pid_file(replica_id)
        if record is None:
            return None
        if self._alive(replica_id, record):
            return record.pid
        self._forget(replica_id)
        return None

    def is_running(self, replica_id: int) -> bool:
        return self.pid(replica_id) is not None

    def running(self) -> dict[int, int]:
        """{replica id: pid} of every replica process that is running."""
        pids = {replica_id: self.pid(replica_id) for replica_id in self.replica_ids}
        return {replica_id: pid for replica_id, pid in pids.items() if pid is not None}

    def exit_code(self, replica_id: int) -> int | None:
        """The exit code of a process this object started and that has ended; None otherwise."""
        child = self._children.get(replica_id)
        return None if child is None else child.poll()

    def log_tail(self, replica_id: int, max_bytes: int = LOG_TAIL_BYTES) -> str:
        """The end of the replica's log (for error messages); empty if there is none."""
        try:
            with open(self.log_path(replica_id), "rb") as file:
                file.seek(0, os.SEEK_END)
                file.seek(max(0, file.tell() - max_bytes))
                return file.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------ starting

    def start(self, replica_id: int) -> StartResult:
        """Start the replica unless it is running; does not wait for it to listen (see ``wait_listening``)."""
        self.cluster.replica(replica_id)
        running = self.pid(replica_id)
        if running is not None:
            return StartResult(replica_id, running, already_running=True)
        for directory in (self.run_directory, self.log_directory):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.log_path(replica_id), "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting replica {replica_id}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(self.command(replica_id), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=self.environment,
                                         cwd=self.cluster.path.parent)
            except OSError as error:
                raise ReplicaProcessError(f"cannot start replica {replica_id}: {error}") from None
        self._children[replica_id] = child
        self._write_pid_file(replica_id, _PidRecord(child.pid, _start_ticks(child.pid)))
        return StartResult(replica_id, child.pid, already_running=False)

    def start_all(self) -> list[StartResult]:
        return [self.start(replica_id) for replica_id in self.replica_ids]

    def up(self, timeout_s: float = LISTEN_TIMEOUT_S) -> list[StartResult]:
        """What ``bft up`` does: check, start every replica not running, wait until each listens.

        Everything a replica would refuse at start-up is checked first (``check_startable``), so a
        mistake starts nothing.  If a replica still fails to come up, the replicas this call started
        are stopped again and ``ReplicaProcessError`` says which; replicas found running are left alone.
        """
        self.check_startable([replica_id for replica_id in self.replica_ids if not self.is_running(replica_id)])
        results: list[StartResult] = []
        try:
            for replica_id in self.replica_ids:
                results.append(self.start(replica_id))
            self.wait_listening(timeout_s=timeout_s)
        except ReplicaProcessError as error:
            started = [result.replica_id for result in results if not result.already_running]
            stopped = [result.replica_id for result in self._stop_many(started, STOP_TIMEOUT_S)
                       if result.outcome != "not-running"]
            undone = f"; stopped the replicas it had started ({', '.join(map(str, stopped))})" if stopped else ""
            raise ReplicaProcessError(f"{error}{undone}") from None
        return results

    def check_startable(self, replica_ids: Iterable[int]) -> None:
        """Raise what would stop each replica at start-up, before any process runs.

        A bad key file, policy or ``--peer`` raises ``ConfigFileError`` or ``ReplicaUsageError``
        (from the same ``prepare_launch`` the replica runs); a port in use, ``PortInUseError``.
        """
        from ._ports import listen_problem
        from ._replica_process import prepare_launch
        for replica_id in replica_ids:
            if replica_id in self.replica_programs:
                continue  # Another program: what it needs is its own business.
            launch = prepare_launch(self.cluster.path, replica_id, self.listen_addresses.get(replica_id),
                                    self.peer_addresses.get(replica_id))
            if launch.database.is_dir():
                raise ConfigFileError(launch.database, f"replica {replica_id}'s database is a directory")
            for address in filter(None, (launch.listen_address, launch.metrics_address)):
                problem = listen_problem(address)
                if problem:
                    raise PortInUseError(f"replica {replica_id} cannot start: {problem}")

    def wait_listening(self, replica_ids: Iterable[int] | None = None, timeout_s: float = LISTEN_TIMEOUT_S) -> None:
        """Wait until every given replica (default: all) accepts TCP connections on its listen address.

        Raises ``ReplicaProcessError`` as soon as one of them is not running (naming its log), or when
        ``timeout_s`` passes.  The probe opens and closes one connection, which the replica logs as a
        connection that ended during the handshake.
        """
        waiting = list(self.replica_ids if replica_ids is None else replica_ids)
        deadline_s = time.monotonic() + timeout_s
        while waiting:
            for replica_id in list(waiting):
                if not self.is_running(replica_id):
                    raise ReplicaProcessError(self._exited_message(replica_id))
                if accepts_connections(self.listen_address(replica_id)):
                    waiting.remove(replica_id)
            if waiting and time.monotonic() >= deadline_s:
                raise ReplicaProcessError(f"replica {waiting[0]} did not listen on "
                                          f"{format_address(self.listen_address(waiting[0]))} within {timeout_s:g} s; "
                                          f"see {self.log_path(waiting[0])}")
            if waiting:
                time.sleep(POLL_INTERVAL_S)

    def _exited_message(self, replica_id: int) -> str:
        code = self.exit_code(replica_id)
        ended = "is not running" if code is None else f"exited with code {code}"
        last_lines = [line for line in self.log_tail(replica_id).splitlines() if line.strip()][-1:]
        detail = f": {last_lines[0].strip()}" if last_lines else ""
        return f"replica {replica_id} {ended} (log {self.log_path(replica_id)}){detail}"

    # ------------------------------------------------------------ stopping and signalling

    def stop(self, replica_id: int, timeout_s: float = STOP_TIMEOUT_S) -> StopResult:
        """SIGTERM, wait up to ``timeout_s`` for a clean exit, then SIGKILL."""
        return self._stop_many([replica_id], timeout_s)[0]

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> list[StopResult]:
        """Stop every replica; all receive SIGTERM at once, so they shut down in parallel."""
        return self._stop_many(list(self.replica_ids), timeout_s)

    def _stop_many(self, replica_ids: list[int], timeout_s: float) -> list[StopResult]:
        records = {replica_id: self._live_record(replica_id) for replica_id in replica_ids}
        started_s = time.monotonic()
        for record in filter(None, records.values()):
            self._signal(record, signal.SIGTERM)  # Exactly once: a second one could interrupt the shutdown.
            self._signal(record, signal.SIGCONT)  # A paused process acts on SIGTERM only once it runs.
        results = []
        for replica_id, record in records.items():
            if record is None:
                results.append(StopResult(replica_id, None, "not-running", self.exit_code(replica_id), 0.0))
                continue
            outcome = "terminated"
            if not self._wait_exit(replica_id, record, max(0.0, started_s + timeout_s - time.monotonic())):
                outcome = "killed"
                self._kill_and_wait(replica_id, record)
            self._forget(replica_id)
            results.append(StopResult(replica_id, record.pid, outcome, self.exit_code(replica_id),
                                      time.monotonic() - started_s))
        return results

    def kill(self, replica_id: int) -> StopResult:
        """SIGKILL (a crash: no shutdown code runs) and wait until the process is gone."""
        record = self._live_record(replica_id)
        if record is None:
            return StopResult(replica_id, None, "not-running", self.exit_code(replica_id), 0.0)
        started_s = time.monotonic()
        self._kill_and_wait(replica_id, record)
        self._forget(replica_id)
        return StopResult(replica_id, record.pid, "killed", self.exit_code(replica_id), time.monotonic() - started_s)

    def _kill_and_wait(self, replica_id: int, record: _PidRecord) -> None:
        self._signal(record, signal.SIGKILL)
        if not self._wait_exit(replica_id, record, KILL_TIMEOUT_S):
            raise ReplicaProcessError(f"replica {replica_id} (pid {record.pid}) survived SIGKILL for "
                                      f"{KILL_TIMEOUT_S:g} s")

    def pause(self, replica_id: int) -> int:
        """SIGSTOP, and wait until the kernel shows the process stopped (a stall, not a crash: its sockets
        stay open and peers see silence).  Returns its pid."""
        pid = self._signal_running(replica_id, signal.SIGSTOP)
        self._wait_stopped_state(replica_id, pid, stopped=True)
        return pid

    def resume(self, replica_id: int) -> int:
        """SIGCONT, and wait until the process runs again.  Returns its pid."""
        pid = self._signal_running(replica_id, signal.SIGCONT)
        self._wait_stopped_state(replica_id, pid, stopped=False)
        return pid

    def _wait_stopped_state(self, replica_id: int, pid: int, stopped: bool) -> None:
        deadline_s = time.monotonic() + KILL_TIMEOUT_S
        while (_process_state(pid) in STOPPED_STATES) != stopped:
            if _process_state(pid) is None:
                return  # No /proc here (or the process is gone): nothing more to wait for.
            if time.monotonic() >= deadline_s:
                raise ReplicaProcessError(f"replica {replica_id} (pid {pid}) did not "
                                          f"{'stop' if stopped else 'continue'} within {KILL_TIMEOUT_S:g} s")
            time.sleep(POLL_INTERVAL_S / 5)

    def restart(self, replica_id: int, timeout_s: float = STOP_TIMEOUT_S) -> StartResult:
        """Stop (if running) and start again; the replica recovers from its database."""
        self.stop(replica_id, timeout_s)
        return self.start(replica_id)

    def _signal_running(self, replica_id: int, signal_number: int) -> int:
        record = self._live_record(replica_id)
        if record is None:
            raise ReplicaProcessError(f"replica {replica_id} is not running")
        self._signal(record, signal_number)
        return record.pid

    def _signal(self, record: _PidRecord, signal_number: int) -> None:
        try:
            os.kill(record.pid, signal_number)
        except ProcessLookupError:
            pass  # It ended on its own meanwhile; the wait that follows sees that.

    def _wait_exit(self, replica_id: int, record: _PidRecord, timeout_s: float) -> bool:
        deadline_s = time.monotonic() + timeout_s
        while self._alive(replica_id, record):
            if time.monotonic() >= deadline_s:
                return False
            time.sleep(POLL_INTERVAL_S / 5)
        return True

    # ------------------------------------------------------------ pid files

    def _live_record(self, replica_id: int) -> _PidRecord | None:
        self.cluster.replica(replica_id)
        record = self._read_pid_file(replica_id)
        if record is not None and self._alive(replica_id, record):
            return record
        self._forget(replica_id)
        return None

    def _alive(self, replica_id: int, record: _PidRecord) -> bool:
        child = self._children.get(replica_id)
        if child is not None and child.pid == record.pid:
            return child.poll() is None  # Our own child: poll also reaps it.
        return _process_alive(record)

    def _read_pid_file(self, replica_id: int) -> _PidRecord | None:
        try:
            fields = self.pid_path(replica_id).read_text().split()
            pid = int(fields[0])
            start_ticks = int(fields[1]) if len(fields) > 1 and fields[1] != "-" else None
        except (OSError, ValueError, IndexError):
            return None  # No file, or one we did not write: nothing we may signal.
        return _PidRecord(pid, start_ticks) if pid > 1 else None

    def _write_pid_file(self, replica_id: int, record: _PidRecord) -> None:
        start = "-" if record.start_ticks is None else str(record.start_ticks)
        temporary = self.pid_path(replica_id).with_suffix(".pid.tmp")
        temporary.write_text(f"{record.pid} {start}\n")
        temporary.replace(self.pid_path(replica_id))

    def _forget(self, replica_id: int) -> None:
        self.pid_path(replica_id).unlink(missing_ok=True)


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks after boot); None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces; count from its end.
    fields_after_name = stat[stat.rindex(")") + 2:].split()
    return int(fields_after_name[19])


def _process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, T, Z, ...), or None without /proc or process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def _process_alive(record: _PidRecord) -> bool:
    """Is the recorded process still running (not exited, not a zombie, not a different process)?"""
    try:
        stat = Path(f"/proc/{record.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # No /proc on this system: ask the kernel whether the pid exists.
        try:
            os.kill(record.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # Someone else's process: not ours to report or signal.
        return True
    fields_after_name = stat[stat.rindex(")") + 2:].split()
    if fields_after_name[0] in ("Z", "X"):
        return False  # Exited, waiting for a parent that may never reap it.
    return record.start_ticks is None or int(fields_after_name[19]) == record.start_ticks


def accepts_connections(address: Address, timeout_s: float = CONNECT_PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to ``address`` succeeds within ``timeout_s`` (it is closed at once)."""
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False
