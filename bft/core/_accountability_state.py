"""The replicated accountability state: quarantine, evidence, suspicion statistics, shared blocklist.

``ExecutionState`` feeds every executed log entry through ``execute`` (live) or
``replay`` (restart, from the durable log).  Both run the same steps in the
same order, so a restarted replica rebuilds exactly the state it had:

1. drop blocklist endorsements whose expiry is before the entry's agreed timestamp;
2. decide the entry: a command through ``_apply`` (its effect), a verdict through
   the blocklist and ``effective_rule`` over the counted votes;
3. for a verdict, push its agreed vote set into the suspicion window and
   re-evaluate who is suspect (and, if enabled, quarantine new suspects);
4. report which blocklist patterns became active or inactive.

Each step returns events (plain dicts) that the log entry records.  Everything
is bounded by ``AccountabilityOptions`` and by n.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._accountability import (BLOCKLIST_ENDORSE, CONFIG_CHANGE, EVIDENCE, QUARANTINE, RELEASE, Command, CommandError,
                              action_texts, canonical_json, fit_reason, is_command_request, parse_command,
                              voters_of, voters_text)
from ._codec import digest, pack
from ._config import REPLICA_SIGNER_PREFIX, ClusterConfig
from ._crypto import Verifier
from ._messages import Decision, Request, Risk, Vote
from ._reconfiguration import ChangeError, EpochChain
from ._vote_statistics import VoteRates, VoteStatistics, lower_median, vote_masks
from ._verdict import (BLOCKLISTED_PREFIX, COMMAND_REJECTED_PREFIX, VerdictRule, counted_votes, decide,
                       effective_rule, is_settled)

if TYPE_CHECKING:
    from ._execution import LogEntry

CAUSES = ("evidence", "operator", "suspicion")
EVENTS_BYTES_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    replica: int
    cause: str
    by: str
    since_position: int
    detail: str


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    accused: int
    phase: str
    view: int
    seq: int
    by: str
    position: int

    @property
    def key(self) -> tuple[int, str, int, int]:
        return (self.accused, self.phase, self.view, self.seq)


@dataclass(frozen=True, slots=True)
class Suspicion:
    replica: int
    reason: str
    since_position: int


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    """How one request executed: its verdict, whose votes did not count, and what changed."""

    decision: Decision
    reason: str
    uncounted: frozenset[int]
    events: tuple[dict[str, Any], ...]

    @property
    def events_text(self) -> str:
        return events_text(self.events)


def events_text(events: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """The canonical JSON a log entry stores for its events ("" for none), at most ``EVENTS_BYTES_MAX``.

    Mass expiry could in principle produce more; the tail is then summarised
    as one "omitted" event, the same way live and on replay.
    """
    kept: list[dict[str, Any]] = []
    size = 2 + len(canonical_json({"event": "omitted", "count": len(events)}))
    for event in events:
        size += len(canonical_json(event).encode()) + 1
        if size > EVENTS_BYTES_MAX:
            kept.append({"event": "omitted", "count": len(events) - len(kept)})
            break
        kept.append(event)
    text = canonical_json(kept) if kept else ""
    assert len(text.encode()) <= EVENTS_BYTES_MAX
    return text


class AccountabilityState:
    def __init__(self, config: ClusterConfig) -> None:
        self._config = config
        self._options = config.accountability
        replica_count = config.replica_count
        self.quarantined: dict[int, QuarantineRecord] = {}
        self.evidence: deque[EvidenceRecord] = deque(maxlen=self._options.evidence_records_max)
        self.suspects: dict[int, Suspicion] = {}
        self.endorsements: dict[str, dict[int, int]] = {}  # pattern -> endorsing replica -> expires at (ms)
        self.statistics = VoteStatistics(replica_count, self._options.suspicion_window_entries,
                                         self._options.suspicion_min_votes)
        self.epochs = EpochChain(config)
        self.epoch = 0  # The epoch whose configuration ``_config`` is: the one of the next seq to execute.

    def enter_epoch_of(self, seq: int) -> None:
        """Make the configuration of the epoch that orders ``seq`` the one that applies (idempotent, monotone).

        Every replica calls this at the same points of the log (before each
        entry, after each executed seq), so the switch is part of the replicated
        state.  Quarantine, suspicion and endorsements of replicas that are not
        in the new epoch with the same key are dropped: a replaced replica's
        record does not follow its successor; the suspicion window restarts.
        """
        epoch = self.epochs.epoch_of_seq(seq)
        if epoch.number == self.epoch:
            return
        assert epoch.number > self.epoch, (epoch.number, self.epoch)
        old_keys, self._config, self.epoch = self._config.replica_keys, epoch.config, epoch.number
        new_keys = epoch.config.replica_keys
        kept = {r for r in range(len(new_keys)) if r < len(old_keys) and old_keys[r] == new_keys[r]}
        self.quarantined = {r: record for r, record in self.quarantined.items() if r in kept}
        self.suspects = {r: suspicion for r, suspicion in self.suspects.items() if r in kept}
        self.endorsements = {pattern: {r: t for r, t in holders.items() if r in kept}
                             for pattern, holders in self.endorsements.items()}
        self.endorsements = {pattern: holders for pattern, holders in self.endorsements.items() if holders}
        self.statistics = VoteStatistics(len(new_keys), self._options.suspicion_window_entries,
                                         self._options.suspicion_min_votes)
        self._check_bounds()

    @property
    def uncounted(self) -> frozenset[int]:
        return frozenset(self.quarantined)

    def rule_for(self, risk: Risk) -> VerdictRule:
        """The verdict rule that applies now, with the quarantined replicas' votes not counted."""
        config = self._config
        return effective_rule(config.rules[risk], config.replica_count, config.faulty_max, len(self.quarantined))

    def is_settled(self, risk: Risk, votes: tuple[Vote, ...]) -> bool:
        """True when no further vote could change the verdict under the rule that applies now."""
        counted = counted_votes(votes, self.uncounted)
        return is_settled(self.rule_for(risk), counted, self._config.replica_count - len(self.quarantined))

    def active_patterns(self) -> dict[str, tuple[int, ...]]:
        """Patterns with at least f+1 unexpired endorsements from replicas that are not quarantined."""
        needed = self._config.faulty_max + 1
        active = {}
        for pattern, holders in self.endorsements.items():
            endorsers = tuple(sorted(r for r in holders if r not in self.quarantined))
            if len(endorsers) >= needed:
                active[pattern] = endorsers
        return active

    # ------------------------------------------------------------------ one entry, live and replayed

    def execute(self, request: Request, votes: tuple[Vote, ...], timestamp_ms: int, position: int,
                seq: int) -> EntryOutcome:
        self.enter_epoch_of(seq)
        before = self.active_patterns()
        events = self._expire(timestamp_ms)
        uncounted = self.uncounted
        if is_command_request(request.client_id):
            decision, reason, effect = self._execute_command(request, votes, timestamp_ms, position, seq, uncounted)
        else:
            decision, reason = self._decide(request, votes, timestamp_ms, uncounted)
            effect = self._observe(*vote_masks(votes), decision is Decision.ALLOW, position)
        events += effect + self._pattern_changes(before)
        self._check_bounds()
        return EntryOutcome(decision, reason, uncounted, tuple(events))

    def _check_bounds(self) -> None:
        options, replica_count = self._options, self._config.replica_count
        assert len(self.quarantined) <= replica_count and len(self.suspects) <= replica_count
        assert len(self.evidence) <= options.evidence_records_max
        assert len(self.endorsements) <= options.blocklist_patterns_max
        assert all(0 < len(holders) <= replica_count for holders in self.endorsements.values())
        assert len(self.statistics) <= options.suspicion_window_entries

    def replay(self, entry: LogEntry) -> None:
        """Re-apply a durable log entry; it must reproduce the events it recorded.

        Our own durable log is trusted input: a mismatch means this code or
        this configuration differs from the ones that wrote it, and the replica
        must not run on (an assertion fails, naming the position).
        """
        self.enter_epoch_of(entry.seq)
        before = self.active_patterns()
        events = self._expire(entry.timestamp_ms)
        assert voters_text(self.uncounted) == entry.uncounted_voters, (entry.position, "quarantine set diverged")
        effect: list[dict[str, Any]] = []
        if is_command_request(entry.client_id) and entry.decision is Decision.ALLOW:
            try:
                command = parse_command(entry.client_id, entry.command, entry.risk)
                effect = self._apply(command, entry.timestamp_ms, entry.position, entry.seq)
            except CommandError as error:
                raise AssertionError(f"replaying position {entry.position}: the command no longer applies ({error})")
        elif not is_command_request(entry.client_id):
            allow_mask = sum(1 << r for r in voters_of(entry.allow_voters))
            deny_mask = sum(1 << r for r in voters_of(entry.deny_voters))
            effect = self._observe(allow_mask, deny_mask, entry.decision is Decision.ALLOW, entry.position)
        events += effect + self._pattern_changes(before)
        assert events_text(events) == entry.events, f"replaying position {entry.position} gave other events"

    def _decide(self, request: Request, votes: tuple[Vote, ...], timestamp_ms: int,
                uncounted: frozenset[int]) -> tuple[Decision, str]:
        rule = self.rule_for(request.risk)
        if timestamp_ms <= request.deadline_ms:
            pattern = self._blocked_by(request.action)
            if pattern is not None:
                reason = f"{BLOCKLISTED_PREFIX}the action matches the shared pattern {pattern!r}"
                return Decision.DENY, fit_reason(reason)
        return decide(rule, counted_votes(votes, uncounted), timestamp_ms, request.deadline_ms)

    def _blocked_by(self, action: str) -> str | None:
        active = self.active_patterns()
        if not active:
            return None
        texts = list(action_texts(action))
        return next((p for p in sorted(active) if any(p in text for text in texts)), None)

    def _execute_command(self, request: Request, votes: tuple[Vote, ...], timestamp_ms: int, position: int,
                         seq: int, uncounted: frozenset[int]) -> tuple[Decision, str, list[dict[str, Any]]]:
        """A command needs the votes' approval (a quorum found it well formed) and a valid effect."""
        rule = self.rule_for(request.risk)
        decision, reason = decide(rule, counted_votes(votes, uncounted), timestamp_ms, request.deadline_ms)
        if decision is Decision.DENY:
            return decision, reason, []
        try:
            command = parse_command(request.client_id, request.action, request.risk)
            effect = self._apply(command, timestamp_ms, position, seq)
        except CommandError as error:
            return Decision.DENY, fit_reason(f"{COMMAND_REJECTED_PREFIX}{error}"), []
        return decision, reason, effect

    # ------------------------------------------------------------------ command effects (validate, then mutate)

    def _apply(self, command: Command, timestamp_ms: int, position: int, seq: int) -> list[dict[str, Any]]:
        if command.kind == CONFIG_CHANGE:
            try:
                return self.epochs.record(command.change, seq)
            except ChangeError as error:
                raise CommandError(f"configuration change refused: {error}") from None
        if command.kind == EVIDENCE:
            return self._apply_evidence(command, position)
        if command.kind == QUARANTINE:
            return self._apply_quarantine(command, position)
        if command.kind == RELEASE:
            return self._apply_release(command)
        assert command.kind == BLOCKLIST_ENDORSE, command.kind
        return self._apply_endorsement(command, timestamp_ms)

    def _check_replica(self, replica_id: int) -> None:
        if not 0 <= replica_id < self._config.replica_count:
            raise CommandError(f"there is no replica {replica_id} in a cluster of {self._config.replica_count}")

    def _apply_evidence(self, command: Command, position: int) -> list[dict[str, Any]]:
        proof = command.proof
        self._check_replica(proof.accused)
        config = self._config
        problem = proof.problem(Verifier(config.cluster_id, config.replica_keys, {}))
        if problem:
            raise CommandError(f"the evidence does not hold: {problem}")
        current = self.quarantined.get(proof.accused)
        if current is not None and current.cause == "evidence":
            raise CommandError(f"replica {proof.accused} is already quarantined on evidence")
        if any(record.key == proof.key for record in self.evidence):
            raise CommandError("this evidence is already recorded")
        accused, phase, view, seq = proof.key
        self.evidence.append(EvidenceRecord(accused, phase, view, seq, command.issuer, position))
        detail = f"two different {phase} messages for view {view} seq {seq}"
        events = [{"event": "evidence", "accused": accused, "phase": phase, "view": view, "seq": seq,
                   "by": command.issuer}]
        return events + self._quarantine(accused, "evidence", command.issuer, position, detail)

    def _apply_quarantine(self, command: Command, position: int) -> list[dict[str, Any]]:
        self._check_replica(command.replica)
        if command.replica in self.quarantined:
            raise CommandError(f"replica {command.replica} is already quarantined")
        self._check_room_without_proof()
        return self._quarantine(command.replica, "operator", command.issuer, position, command.note)

    def _check_room_without_proof(self) -> None:
        if len(self.quarantined) >= self._config.faulty_max:
            raise CommandError(f"without proof at most f = {self._config.faulty_max} replicas may be quarantined")

    def _apply_release(self, command: Command) -> list[dict[str, Any]]:
        self._check_replica(command.replica)
        if command.replica not in self.quarantined:
            raise CommandError(f"replica {command.replica} is not quarantined")
        del self.quarantined[command.replica]
        return [{"event": "released", "replica": command.replica, "by": command.issuer, "note": command.note}]

    def _apply_endorsement(self, command: Command, timestamp_ms: int) -> list[dict[str, Any]]:
        replica_id = int(command.issuer[len(REPLICA_SIGNER_PREFIX):])
        self._check_replica(replica_id)
        options = self._options
        if replica_id in self.quarantined:
            raise CommandError(f"replica {replica_id} is quarantined and may not endorse patterns")
        if command.ttl_ms > options.blocklist_ttl_ms_max:
            raise CommandError(f"ttl_ms {command.ttl_ms} exceeds the limit of {options.blocklist_ttl_ms_max}")
        holders = self.endorsements.get(command.pattern)
        if holders is None and len(self.endorsements) >= options.blocklist_patterns_max:
            raise CommandError(f"the blocklist already holds {options.blocklist_patterns_max} patterns")
        held = sum(1 for p, h in self.endorsements.items() if replica_id in h and p != command.pattern)
        if held >= options.blocklist_endorsements_per_replica_max:
            raise CommandError(f"replica {replica_id} already endorses {held} patterns, the limit")
        expires_ms = timestamp_ms + command.ttl_ms
        self.endorsements.setdefault(command.pattern, {})[replica_id] = expires_ms
        assert len(self.endorsements) <= options.blocklist_patterns_max
        return [{"event": "endorsed", "pattern": command.pattern, "by": replica_id, "expires_ms": expires_ms}]

    def _quarantine(self, replica_id: int, cause: str, by: str, position: int, detail: str) -> list[dict[str, Any]]:
        assert cause in CAUSES and 0 <= replica_id < self._config.replica_count
        self.quarantined[replica_id] = QuarantineRecord(replica_id, cause, by, position, detail)
        return [{"event": "quarantined", "replica": replica_id, "cause": cause, "by": by, "detail": detail}]

    # ------------------------------------------------------------------ expiry and blocklist changes

    def _expire(self, timestamp_ms: int) -> list[dict[str, Any]]:
        events = []
        for pattern in sorted(self.endorsements):
            holders = self.endorsements[pattern]
            for replica_id in sorted(r for r, expires_ms in holders.items() if expires_ms < timestamp_ms):
                del holders[replica_id]
                events.append({"event": "endorsement-expired", "pattern": pattern, "replica": replica_id})
            if not holders:
                del self.endorsements[pattern]
        return events

    def _pattern_changes(self, before: dict[str, tuple[int, ...]]) -> list[dict[str, Any]]:
        after = self.active_patterns()
        events = []
        for pattern in sorted(before.keys() | after.keys()):
            if pattern in after and pattern not in before:
                events.append({"event": "pattern-active", "pattern": pattern, "endorsers": list(after[pattern])})
            elif pattern in before and pattern not in after:
                events.append({"event": "pattern-inactive", "pattern": pattern})
        return events

    # ------------------------------------------------------------------ statistics and suspicion

    def _observe(self, allow_mask: int, deny_mask: int, allowed: bool, position: int) -> list[dict[str, Any]]:
        """Push one verdict's agreed vote set into the sliding window, then re-evaluate suspicion."""
        self.statistics.push(allow_mask, deny_mask, allowed)
        return self._update_suspects(position)

    def _suspicion_of(self, replica_id: int, rates: dict[int, VoteRates]) -> tuple[str | None, bool]:
        """(reason to suspect, or None; whether an existing suspicion may be cleared)."""
        peers = [rates[p] for p in rates if p != replica_id and p not in self.quarantined]
        if replica_id not in rates or len(peers) < 2:
            return None, False
        own = rates[replica_id]
        peer_approval = lower_median([peer.approval_permille for peer in peers])
        approves_all, approver_fine = self._one_sided(1000 - own.approval_permille, 1000 - peer_approval,
                                                      own.peers_denied, own.approved_what_peers_denied)
        denies_all, denier_fine = self._one_sided(own.approval_permille, peer_approval,
                                                  own.peers_approved, own.denied_what_peers_approved)
        rates_text = f"approval rate {own.approval_permille}/1000 (peers' median {peer_approval}/1000)"
        if approves_all:
            return (f"{rates_text}; approved {own.approved_what_peers_denied} of the {own.peers_denied} "
                    "requests most others denied"), False
        if denies_all:
            return (f"{rates_text}; denied {own.denied_what_peers_approved} of the {own.peers_approved} "
                    "requests most others approved"), False
        return None, approver_fine and denier_fine

    def _one_sided(self, own_rate: int, peer_rate: int, contested: int, against: int) -> tuple[bool, bool]:
        """(suspect, clearly fine) for one direction: ``own_rate`` and ``peer_rate`` are per mille of the
        *other* decision (DENY for an approver); ``against`` of the ``contested`` verdicts that most other
        voters decided that other way, the replica voted against them.

        A suspicion clears only well inside the thresholds (twice the share, twice
        as far from unanimity), so that a replica near them does not flap.
        """
        options = self._options
        share, against_permille = options.one_sided_share_permille, options.against_peers_permille
        judged = contested >= options.suspicion_min_contested and peer_rate > 0
        suspect = judged and own_rate * 1000 <= share * peer_rate and against * 1000 >= against_permille * contested
        fine = (own_rate * 1000 > 2 * share * peer_rate
                or (judged and against * 1000 < (2 * against_permille - 1000) * contested))
        return suspect, fine

    def _update_suspects(self, position: int) -> list[dict[str, Any]]:
        rates = {r: rate for r in range(self._config.replica_count)
                 if (rate := self.statistics.rates(r)) is not None}
        events = []
        for replica_id in range(self._config.replica_count):
            reason, clearable = self._suspicion_of(replica_id, rates)
            if reason is not None and replica_id not in self.suspects:
                self.suspects[replica_id] = Suspicion(replica_id, reason, position)
                events.append({"event": "suspected", "replica": replica_id, "reason": reason})
                events += self._maybe_isolate(replica_id, reason, position)
            elif reason is None and clearable and replica_id in self.suspects:
                del self.suspects[replica_id]
                events.append({"event": "suspicion-cleared", "replica": replica_id})
        return events

    def _maybe_isolate(self, replica_id: int, reason: str, position: int) -> list[dict[str, Any]]:
        if not self._options.auto_quarantine_suspects or replica_id in self.quarantined:
            return []
        if len(self.quarantined) >= self._config.faulty_max:
            return [{"event": "quarantine-skipped", "replica": replica_id,
                     "detail": f"without proof at most f = {self._config.faulty_max} replicas may be quarantined"}]
        return self._quarantine(replica_id, "suspicion", "auto", position, reason)

    # ------------------------------------------------------------------ reading and transferring the state

    def status(self) -> dict[str, Any]:
        """A JSON-ready view for operators (``bft status``) and metrics."""
        active = self.active_patterns()
        return {
            "quarantined": [_record(record) for _, record in sorted(self.quarantined.items())],
            "suspects": [_record(suspicion) for _, suspicion in sorted(self.suspects.items())],
            "evidence": [_record(record) for record in self.evidence],
            "blocklist": [{"pattern": pattern, "active": pattern in active,
                           "endorsements": [{"replica": r, "expires_ms": holders[r]} for r in sorted(holders)]}
                          for pattern, holders in sorted(self.endorsements.items())],
            "replicas": [self._replica_figures(r) for r in range(self._config.replica_count)],
            "window_entries": len(self.statistics),
        }

    def _replica_figures(self, replica_id: int) -> dict[str, Any]:
        rates = self.statistics.rates(replica_id)
        figures = {"replica": replica_id, "votes": self.statistics.cast[replica_id]}
        if rates is None:
            return figures
        return figures | {"approval_permille": rates.approval_permille,
                          "disagreement_permille": rates.disagreement_permille,
                          "approved_what_peers_denied": [rates.approved_what_peers_denied, rates.peers_denied],
                          "denied_what_peers_approved": [rates.denied_what_peers_approved, rates.peers_approved]}

    def summary(self) -> dict[str, int]:
        """Counts for metrics gauges: quarantined, suspects, evidence records, blocklist patterns (all, active)."""
        return {"quarantined": len(self.quarantined), "suspects": len(self.suspects), "evidence": len(self.evidence),
                "blocklist_patterns": len(self.endorsements), "blocklist_active": len(self.active_patterns())}

    def to_wire(self) -> list:
        """Plain msgpack data (ints, bytes, text, arrays) in one deterministic order.

        It goes into ``ExecutionState.export_state``, so checkpoints certify it.
        State transfer needs no reader: the state is a function of the verdict
        log and is rebuilt by replaying the transferred entries.
        """
        return [
            [[r.replica, r.cause, r.by, r.since_position, r.detail] for _, r in sorted(self.quarantined.items())],
            [[r.accused, r.phase, r.view, r.seq, r.by, r.position] for r in self.evidence],
            [[s.replica, s.reason, s.since_position] for _, s in sorted(self.suspects.items())],
            [[pattern, [[r, holders[r]] for r in sorted(holders)]]
             for pattern, holders in sorted(self.endorsements.items())],
            self.statistics.to_wire(),
        ]

    def digest(self) -> bytes:
        return digest(pack(self.to_wire()))


def _record(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}
