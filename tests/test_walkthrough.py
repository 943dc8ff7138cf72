"""The README's walk-through across hosts works as written: every ``HOST$ command`` line of its block runs on that host (a Linux network namespace with the address the README gives it), each output line the README shows appears in the command's output, the verdict's certificate verifies, a replica's key is rotated and a replica replaced through `bft operator reconfigure` (each old process retires and exits by itself), a verdict of the last epoch and the first verify against the chain, and afterwards each host's folder holds only keys it made itself.

``scp FILE HOST:`` lines are done as a local copy into that host's folder (the README says any way of
copying works); ``bft replica`` lines are started in the background and waited for; a ``bft replica``
line on a host whose replica is still running waits for that one to retire first.  Placeholders
``<HOST's key>`` stand for what the first ``bft keygen`` printed on that host, ``<HOST's NAME key>`` for
what ``bft keygen --out NAME.key`` printed there.  The namespace run is skipped, with the reason, where
network namespaces cannot be made; the loopback run (each host a folder, each address moved to a free port of
127.0.0.1) runs the same commands everywhere.  Both start real processes, so they are marked slow.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from _netns import HostNetwork, LoopbackHosts, namespaces_problem, wait_for_line
from bft.cluster import free_loopback_ports

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK_PATTERN = re.compile(r"<!-- walkthrough:begin -->\s*```console\n(.*?)```\s*<!-- walkthrough:end -->", re.S)
COMMAND_PATTERN = re.compile(r"^([a-z0-9-]+)\$ (.+)$")
PLACEHOLDER_PATTERN = re.compile(r"<([a-z0-9-]+)'s (?:([a-z0-9-]+) )?key>")
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 20.0
RETIRE_TIMEOUT_S = 60.0
STEPS_MAX = 100
PROBLEM = namespaces_problem()


@dataclass
class Step:
    host: str
    command: str
    shown_output: list[str] = field(default_factory=list)


def walkthrough_steps(text: str) -> list[Step]:
    """The commands of the README's walk-through block, each with the output lines shown under it."""
    blocks = BLOCK_PATTERN.findall(text)
    assert len(blocks) == 1, "README.md must have exactly one walk-through block"
    steps: list[Step] = []
    for line in blocks[0].splitlines():
        match = COMMAND_PATTERN.match(line)
        if match:
            steps.append(Step(match.group(1), match.group(2)))
        elif line.strip():
            assert steps, f"output shown before any command: {line!r}"
            steps[-1].shown_output.append(line.rstrip())
    assert 0 < len(steps) <= STEPS_MAX
    return steps


def test_the_readme_block_parses_into_commands_on_named_hosts():
    steps = walkthrough_steps(README.read_text())
    hosts = {step.host for step in steps}
    assert hosts == {"host-0", "host-1", "host-2", "host-3", "host-4", "laptop"}
    assert {step.host for step in steps if step.command.startswith("bft keygen")} == hosts
    naming_a_key = [step.command.split()[1] for step in steps if ".key" in step.command]
    assert set(naming_a_key) == {"keygen", "replica", "submit", "operator"}, \
        "only a node's own commands name its key file"
    assert [step.command.split()[2] for step in steps if step.command.startswith("bft operator")] == \
        ["reconfigure", "reconfigure"]


def shown_line_pattern(line: str) -> re.Pattern:
    """A line the README shows, ``…`` matching anything."""
    return re.compile(".*".join(re.escape(part) for part in line.split("…")))


class Walkthrough:
    def __init__(self, network: HostNetwork | LoopbackHosts, root: Path,
                 addresses: Callable[[str], str] = lambda line: line) -> None:
        self.network = network
        self.root = root
        self.addresses = addresses  # Moves the README's addresses where this run has its hosts.
        self.public_keys: dict[tuple[str, str | None], str] = {}  # (host, key name or None for its first key)
        self.replicas: list[tuple[str, subprocess.Popen]] = []
        self.retired: set[int] = set()  # Indexes into ``replicas`` of the processes seen retiring.
        bin_directory = str(Path(sys.executable).parent)  # Where the virtual environment's ``bft`` lives.
        self.environment = {**os.environ, "PATH": f"{bin_directory}:{os.environ.get('PATH', '')}"}

    def folder(self, host: str) -> Path:
        return self.root / host

    def run(self, step: Step) -> None:
        command = PLACEHOLDER_PATTERN.sub(lambda match: self.public_keys[match.group(1), match.group(2)],
                                          self.addresses(step.command))
        if command.startswith("scp "):
            self.copy(step.host, command)
        elif command.startswith("bft replica "):
            self.start(step.host, command)
        else:
            self.run_to_completion(step, command)

    def copy(self, host: str, command: str) -> None:
        source, target = shlex.split(command)[1:]
        assert target.endswith(":") and "/" not in source, f"the test copies FILE HOST: only, not {command!r}"
        shutil.copy(self.folder(host) / source, self.folder(target.removesuffix(":")) / source)

    def start(self, host: str, command: str) -> None:
        self.wait_for_retirement(host)
        log = self.folder(host) / f"replica-{len(self.replicas)}.log"
        process = self.network.start(host, ["sh", "-c", f"exec {command}"], log=log, cwd=self.folder(host),
                                     env=self.environment)
        self.replicas.append((host, process))
        wait_for_line(log, "is serving on", process, START_TIMEOUT_S)

    def wait_for_retirement(self, host: str) -> None:
        """A host's replica still running is one a change took out: it retires and exits 0 by itself, saying so."""
        for index, (running_host, process) in enumerate(self.replicas):
            if running_host == host and index not in self.retired:
                process.wait(RETIRE_TIMEOUT_S)
                log = (self.folder(host) / f"replica-{index}.log").read_text()
                assert process.returncode == 0 and "retired in epoch" in log, log[-2000:]
                self.retired.add(index)

    def run_to_completion(self, step: Step, command: str) -> None:
        result = self.network.run(step.host, ["sh", "-c", command], cwd=self.folder(step.host),
                                  env=self.environment, timeout_s=COMMAND_TIMEOUT_S)
        assert result.returncode == 0, f"{step.host}$ {command}\nexit {result.returncode}: {result.stderr}"
        printed = (result.stdout + result.stderr).splitlines()
        for shown in step.shown_output:
            pattern = shown_line_pattern(self.addresses(shown))
            assert any(pattern.fullmatch(line) for line in printed), f"{step.host}$ {command}: README shows " \
                                                                    f"{shown!r}, the command printed {printed}"
        if command.startswith("bft keygen"):
            key_name = Path(shlex.split(command)[-1]).stem
            self.public_keys.setdefault((step.host, None), result.stdout.strip())
            self.public_keys[step.host, key_name] = result.stdout.strip()


@pytest.mark.slow
@pytest.mark.skipif(PROBLEM is not None, reason=f"no network namespaces here: {PROBLEM}")
def test_the_readme_walkthrough_runs_as_written_across_namespaces(tmp_path):
    steps = walkthrough_steps(README.read_text())
    hosts = list(dict.fromkeys(step.host for step in steps))
    with HostNetwork(sorted(hosts, key=lambda host: (host == "laptop", host))) as network:
        run_walkthrough(Walkthrough(network, tmp_path), steps, hosts)
    assert_each_folder_holds_only_its_own_key(tmp_path, hosts)


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written_on_loopback(tmp_path):
    """The same commands where namespaces cannot be made (CI without root): each host a folder on this machine,
    each README address ``10.77.0.N:7000`` (and the bind address on its line) moved to a free port of 127.0.0.1."""
    steps = walkthrough_steps(README.read_text())
    hosts = list(dict.fromkeys(step.host for step in steps))
    ports = dict(zip(range(1, len(hosts) + 1), free_loopback_ports(len(hosts))))

    def on_loopback(line: str) -> str:
        named = re.search(r"10\.77\.0\.(\d+):7000", line)
        if named is None:
            return line
        port = ports[int(named.group(1))]
        return re.sub(r"10\.77\.0\.\d+:7000", f"127.0.0.1:{port}", line).replace("0.0.0.0:7000", f"127.0.0.1:{port}")
    with LoopbackHosts() as loopback:
        run_walkthrough(Walkthrough(loopback, tmp_path, on_loopback), steps, hosts)
    assert_each_folder_holds_only_its_own_key(tmp_path, hosts)


def run_walkthrough(walkthrough: Walkthrough, steps: list[Step], hosts: list[str]) -> None:
    """Every step in order; then the two replaced processes retired, the four members run, both verdicts ALLOW."""
    for host in hosts:
        walkthrough.folder(host).mkdir()
    for step in steps:
        walkthrough.run(step)
    walkthrough.wait_for_retirement("host-2")  # The README replaced it by host-4's replica.
    assert len(walkthrough.replicas) == 6 and len(walkthrough.retired) == 2  # host-1's old-key one, host-2's.
    running = [host for index, (host, _) in enumerate(walkthrough.replicas) if index not in walkthrough.retired]
    assert running == ["host-0", "host-3", "host-1", "host-4"]
    for index, (host, process) in enumerate(walkthrough.replicas):
        assert index in walkthrough.retired or process.poll() is None, f"the replica on {host} exited"
    for verdict in ("verdict.json", "verdict-2.json"):
        assert '"status": "ALLOW"' in (walkthrough.folder("laptop") / verdict).read_text()


def assert_each_folder_holds_only_its_own_key(root: Path, hosts: list[str]) -> None:
    """Each key file in a host's folder is one it made (the laptop: client and operator, host-1: its rotated key
    too), and no other host's private key appears anywhere in its files."""
    seeds = {host: [path.read_text().strip() for path in (root / host).glob("*.key")] for host in hosts}
    for host in hosts:
        files = [path for path in (root / host).rglob("*") if path.is_file()]
        assert 1 <= len([path for path in files if path.suffix == ".key"]) <= 2, files
        text = b"".join(path.read_bytes() for path in files)
        assert [other for other, host_seeds in seeds.items() if other != host
                for seed in host_seeds if seed.encode() in text] == []
