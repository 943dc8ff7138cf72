"""Golden interaction scripts: replay a plain-text script against sans-IO replicas and print what they do.

Format (tests/interactions/README.md has the full command list)::

    # Comment lines and blank lines between blocks are kept as they are.
    command positional key=value key="quoted value"
    ----
    the exact output of the command, one or more lines
    (a command with no output prints "ok")

A block is a command line, a line of four dashes, and the output up to the next
blank line or the end of the file.  ``replay(text)`` runs every command in order
against one fresh driver and returns the script with each block's output
replaced by what the replicas did now; a script passes when that equals its
text.  The output is deterministic: keys come from fixed seeds, time moves only
on ``tick``, messages move only on ``deliver``/``stabilize``, and signatures
(deterministic Ed25519 anyway) are never printed.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from typing import Callable

from ..core import ConfigError, Limits, LocalProtocolError, PrePrepare, Risk
from ._byzantine import _other_batch, equivocating_primary, hiding_view_changes, honest, silent
from ._interaction_cluster import InteractionCluster, ScriptError, endpoint_name
from ._interaction_text import TYPE_NAMES, quoted

SEPARATOR = "----"
STABILIZE_DELIVERIES_MAX = 20_000
TICKS_PER_COMMAND_MAX = 10_000
STRATEGY_NAMES = ("honest", "silent", "hiding-view-changes", "equivocating-primary", "double-preprepare",
                  "drop-preprepares")


@dataclass
class Block:
    """One command of a script: the text before it (comments, blank lines), the command and its output."""

    preamble: list[str]
    line_number: int
    command: str
    output: list[str]


def parse(text: str) -> tuple[list[Block], list[str]]:
    """The blocks of a script and the lines after the last one."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    blocks, preamble, index = [], [], 0
    while index < len(lines):
        line = lines[index]
        if not line.strip() or line.startswith("#"):
            preamble.append(line)
            index += 1
            continue
        if index + 1 >= len(lines) or lines[index + 1] != SEPARATOR:
            raise ScriptError(f"line {index + 1}: command {line!r} must be followed by a line {SEPARATOR!r}")
        end = index + 2
        while end < len(lines) and lines[end].strip():
            end += 1
        blocks.append(Block(preamble, index + 1, line, lines[index + 2:end]))
        preamble, index = [], end
    return blocks, preamble


def render(blocks: list[Block], trailing: list[str]) -> str:
    out: list[str] = []
    for block in blocks:
        out.extend(block.preamble)
        out.extend([block.command, SEPARATOR, *block.output])
    out.extend(trailing)
    return "\n".join(out) + "\n"


def replay(text: str) -> str:
    """``text`` with every block's output recomputed by running the commands in order."""
    blocks, trailing = parse(text)
    driver = Interactions()
    replayed = []
    for block in blocks:
        try:
            output = driver.run(block.command)
        except ScriptError as error:
            raise ScriptError(f"line {block.line_number}: {block.command!r}: {error}") from None
        replayed.append(Block(block.preamble, block.line_number, block.command, output or ["ok"]))
    return render(replayed, trailing)


def drop_preprepares():
    """A primary whose PRE-PREPAREs never leave it (a silent primary that still answers everything else)."""
    return lambda destination, message, signer: [] if isinstance(message, PrePrepare) else [message]


def double_preprepare(targets: list[int]):
    """As primary, sends the replicas in ``targets`` its PRE-PREPARE and a second, re-signed one for the
    same seq with another batch: the pair is a proof of equivocation in the hands of its receiver."""
    chosen = frozenset(targets)

    def intercept(destination, message, signer):
        if isinstance(message, PrePrepare) and destination in chosen:
            return [message, signer.sign(dataclasses.replace(message, batch=_other_batch(message.batch)))]
        return [message]

    return intercept


class Arguments:
    """A command's positional words and key=value options; every option must be used exactly as documented."""

    def __init__(self, words: list[str]) -> None:
        self.positional = [word for word in words if "=" not in word]
        self.options = dict(word.split("=", 1) for word in words if "=" in word)
        self._used: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:
        self._used.add(key)
        return self.options.get(key, default)

    def finish(self) -> None:
        unknown = sorted(set(self.options) - self._used)
        if unknown:
            raise ScriptError(f"unknown options: {', '.join(unknown)}")
        if self.positional:
            raise ScriptError(f"unexpected words: {' '.join(self.positional)}")


def replica_ids(text: str, replica_count: int) -> list[int]:
    """"0,2" or "r0,r2" -> [0, 2], each checked against the cluster size."""
    ids = []
    for part in text.split(","):
        part = part.strip().removeprefix("r")
        if not part.isdigit() or int(part) >= replica_count:
            raise ScriptError(f"{part!r} is not a replica of a cluster of {replica_count}")
        ids.append(int(part))
    return ids


class Interactions:
    """The state of one script: a cluster, once ``cluster`` has created it, and the command table."""

    def __init__(self) -> None:
        self.cluster: InteractionCluster | None = None
        self.commands: dict[str, Callable[[Arguments, list[str]], None]] = {
            "cluster": self._cluster, "propose": self._propose, "deliver": self._deliver, "drop": self._drop,
            "stabilize": self._stabilize, "tick": self._tick, "policy": self._policy, "decide": self._decide,
            "crash": self._crash, "restart": self._restart, "partition": self._partition, "heal": self._heal,
            "hold": self._hold, "process-ready": self._process_ready, "byzantine": self._byzantine,
            "operator": self._operator, "status": self._status, "queue": self._queue, "log": self._log,
        }

    def run(self, command_line: str) -> list[str]:
        words = shlex.split(command_line)
        handler = self.commands.get(words[0])
        if handler is None:
            raise ScriptError(f"unknown command {words[0]!r}; known: {', '.join(sorted(self.commands))}")
        if words[0] != "cluster" and self.cluster is None:
            raise ScriptError("the first command must be cluster")
        arguments, lines = Arguments(words[1:]), []
        try:
            handler(arguments, lines)
        except (LocalProtocolError, ConfigError) as error:  # The core refused the input: part of its behaviour.
            lines.append(f"error: {error}")
        arguments.finish()
        return lines

    # ------------------------------------------------------------ helpers

    def _replicas(self, arguments: Arguments, key: str = "r", default_all: bool = True) -> list[int]:
        text = arguments.get(key)
        if text is None and arguments.positional and key == "r":
            text = arguments.positional.pop(0)
        if text is None:
            if not default_all:
                raise ScriptError(f"name the replicas with {key}=...")
            return list(range(self.cluster.replica_count))
        return replica_ids(text, self.cluster.replica_count)

    @staticmethod
    def _word(arguments: Arguments, choices: tuple[str, ...]) -> str | None:
        """The positional word among ``choices`` (taken out of the positionals), or None."""
        found = [word for word in arguments.positional if word in choices]
        if len(found) != 1:
            return None
        arguments.positional.remove(found[0])
        return found[0]

    def _endpoint(self, text: str | None):
        if text is None:
            return None
        bare = text.removeprefix("r")
        return int(bare) if bare.isdigit() else text

    def _filters(self, arguments: Arguments):
        type_name = arguments.get("type")
        if type_name is not None and type_name not in TYPE_NAMES.values():
            raise ScriptError(f"type must be one of {', '.join(sorted(TYPE_NAMES.values()))}")
        return self._endpoint(arguments.get("from")), self._endpoint(arguments.get("to")), type_name

    # ------------------------------------------------------------ commands

    def _cluster(self, arguments: Arguments, lines: list[str]) -> None:
        replica_count = int(arguments.get("n", "4"))
        clients = tuple(arguments.get("clients", "client-0").split(","))
        fields = {name for name in Limits.__dataclass_fields__}
        limits = {key: int(value) for key, value in arguments.options.items() if key in fields}
        for key in limits:
            arguments.get(key)
        self.cluster = InteractionCluster(replica_count, clients, Limits(**limits))
        config = self.cluster.config
        lines.append(f"n={config.replica_count} f={config.faulty_max} quorum={config.quorum} "
                     f"reply-quorum={config.reply_quorum} clients={','.join(clients)}")
        for risk, rule in config.rules.items():
            lines.append(f"rule {risk.value}: ALLOW needs >= {rule.min_allow_votes} allow votes "
                         f"and <= {rule.max_deny_votes} deny votes")

    def _propose(self, arguments: Arguments, lines: list[str]) -> None:
        cluster = self.cluster
        action = arguments.get("action", "read")
        text = action if action.startswith("{") else json.dumps({"op": action})
        deadline = cluster.now_ms + int(arguments.get("deadline", "30000"))
        to = self._replicas(arguments, "to")
        risk = Risk(arguments.get("risk", "low"))
        cluster.propose(arguments.get("client", "client-0"), text, risk, deadline, to, lines)

    def _deliver(self, arguments: Arguments, lines: list[str]) -> None:
        """Deliver the queued messages that match, in the order they were sent (not those sent meanwhile)."""
        cluster = self.cluster
        chosen = cluster.matching(*self._filters(arguments))
        count = arguments.get("count")
        if count is not None:
            chosen = chosen[:int(count)]
        cluster.take(chosen)
        for item in chosen:
            cluster.deliver(item, lines)

    def _drop(self, arguments: Arguments, lines: list[str]) -> None:
        cluster = self.cluster
        chosen = cluster.matching(*self._filters(arguments))
        cluster.take(chosen)
        for item in chosen:
            lines.append(f"dropped {endpoint_name(item.source)}->{endpoint_name(item.destination)} "
                         f"{cluster.names.describe(item.message())}")

    def _stabilize(self, arguments: Arguments, lines: list[str]) -> None:
        """Deliver until nothing is in flight (messages sent meanwhile too), at most a bounded number."""
        cluster, delivered = self.cluster, 0
        while cluster.queue:
            if delivered >= STABILIZE_DELIVERIES_MAX:
                raise ScriptError(f"still not stable after {STABILIZE_DELIVERIES_MAX} deliveries")
            cluster.deliver(cluster.queue.pop(0), lines)
            delivered += 1

    def _tick(self, arguments: Arguments, lines: list[str]) -> None:
        count_text = arguments.get("n")
        if count_text is None and arguments.positional and arguments.positional[0].isdigit():
            count_text = arguments.positional.pop(0)
        count = int(count_text or "1")
        if not 1 <= count <= TICKS_PER_COMMAND_MAX:
            raise ScriptError(f"tick count must be in [1, {TICKS_PER_COMMAND_MAX}]")
        chosen = self._replicas(arguments)
        for _ in range(count):
            self.cluster.tick(chosen, lines)

    def _policy(self, arguments: Arguments, lines: list[str]) -> None:
        answer = self._word(arguments, ("allow", "deny", "manual"))
        if answer is None:
            raise ScriptError("policy r=IDS allow|deny|manual")
        for replica_id in self._replicas(arguments, default_all=False):
            self.cluster.policies[replica_id] = answer
        lines.append(" ".join(f"r{r}={p}" for r, p in self.cluster.policies.items()))

    def _decide(self, arguments: Arguments, lines: list[str]) -> None:
        """Answer the evaluations a manual policy holds: record_decision for each, in arrival order."""
        answer = self._word(arguments, ("allow", "deny"))
        if answer is None:
            raise ScriptError("decide r=IDS allow|deny [reason=...]")
        reason = arguments.get("reason")
        for replica_id in self._replicas(arguments, default_all=False):
            waiting, self.cluster.awaiting_decision[replica_id] = self.cluster.awaiting_decision[replica_id], []
            if not waiting:
                lines.append(f"r{replica_id} has nothing to decide")
            for request in waiting:
                self.cluster.decide(replica_id, request, answer, reason, lines, "")

    def _crash(self, arguments: Arguments, lines: list[str]) -> None:
        for replica_id in self._replicas(arguments, default_all=False):
            signed, log = self.cluster.crash(replica_id)
            lines.append(f"r{replica_id} crashed; its store holds {signed} signed messages and {log} log entries")

    def _restart(self, arguments: Arguments, lines: list[str]) -> None:
        for replica_id in self._replicas(arguments, default_all=False):
            self.cluster.restart(replica_id, lines)

    def _partition(self, arguments: Arguments, lines: list[str]) -> None:
        """partition 0,1 | 2,3: messages between the groups are dropped when delivered."""
        groups = [replica_ids(g.strip(), self.cluster.replica_count)
                  for g in " ".join(arguments.positional).split("|")]
        arguments.positional.clear()
        if len(groups) < 2:
            raise ScriptError("partition needs at least two groups: partition 0,1 | 2,3")
        self.cluster.blocked = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}
        lines.append("partitioned " + " | ".join(",".join(f"r{r}" for r in g) for g in groups))

    def _heal(self, arguments: Arguments, lines: list[str]) -> None:
        self.cluster.blocked = set()
        lines.append("healed")

    def _hold(self, arguments: Arguments, lines: list[str]) -> None:
        """Hold a replica's Readies: computed, but neither persisted nor sent until process-ready."""
        for replica_id in self._replicas(arguments, default_all=False):
            self.cluster.held.setdefault(replica_id, [])
            lines.append(f"r{replica_id} holds its Readies")

    def _process_ready(self, arguments: Arguments, lines: list[str]) -> None:
        for replica_id in self._replicas(arguments):
            if replica_id in self.cluster.held:
                self.cluster.release(replica_id, lines)

    def _byzantine(self, arguments: Arguments, lines: list[str]) -> None:
        """byzantine r=ID STRATEGY [targets=IDS]: the replica's outgoing messages pass STRATEGY (STRATEGY_NAMES)."""
        strategy = self._word(arguments, STRATEGY_NAMES)
        replica_id = self._replicas(arguments, default_all=False)[0]
        factories = {"honest": honest, "silent": silent, "hiding-view-changes": hiding_view_changes,
                     "equivocating-primary": lambda: equivocating_primary(
                         replica_ids(arguments.get("targets", ""), self.cluster.replica_count)),
                     "drop-preprepares": drop_preprepares,
                     "double-preprepare": lambda: double_preprepare(
                         replica_ids(arguments.get("targets", ""), self.cluster.replica_count))}
        if strategy not in factories:
            raise ScriptError(f"strategy must be one of {', '.join(sorted(factories))}")
        self.cluster.interceptors[replica_id] = factories[strategy]()
        lines.append(f"r{replica_id} is {strategy}")

    def _operator(self, arguments: Arguments, lines: list[str]) -> None:
        """operator quarantine|release r=ID [note=...]: an operator command, sent to every replica."""
        kind = self._word(arguments, ("quarantine", "release"))
        if kind not in ("quarantine", "release"):
            raise ScriptError("operator quarantine|release r=ID")
        replica_id = replica_ids(arguments.get("r", ""), self.cluster.replica_count)[0]
        self.cluster.operator_command(kind, replica_id, arguments.get("note", ""), lines)

    def _status(self, arguments: Arguments, lines: list[str]) -> None:
        lines.extend(self.cluster.status_lines(self._replicas(arguments)))
        lines.append(f"in flight: {len(self.cluster.queue)} messages, clock tick {self.cluster.tick_count}")

    def _queue(self, arguments: Arguments, lines: list[str]) -> None:
        cluster = self.cluster
        for item in cluster.matching(*self._filters(arguments)):
            lines.append(f"{endpoint_name(item.source)}->{endpoint_name(item.destination)} "
                         f"{cluster.names.describe(item.message())}")
        if not lines:
            lines.append("nothing in flight")

    def _log(self, arguments: Arguments, lines: list[str]) -> None:
        for replica_id in self._replicas(arguments):
            entries = self.cluster.stores[replica_id].log
            lines.append(f"r{replica_id} log: {len(entries)} entries")
            lines.extend(f"  {self.cluster.names.describe(entry)} {quoted(entry.reason)}" for entry in entries)
