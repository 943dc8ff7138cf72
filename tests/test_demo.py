"""`bft demo` runs a five-replica cluster over loopback to completion: it prints one line per verdict and a summary, exits 0, writes a certificate that verifies offline with the cluster's public keys, never lets a dangerous sample through despite the approve-everything replica, and answers user mistakes with one sentence and exit code 2."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from bft.cli import main
from bft.core import ClusterConfig, Decision, Risk, VerdictCertificate, Vote, decide, default_rules
from bft.demo import BORDERLINE_ACTIONS, DANGEROUS_ACTIONS, demo_policies, generate_samples, run_demo
from bft.policies import CapabilityDenyList, ContextRules, PatternMatcher, RatePolicy
from bft.policy import PolicyContext
from bft.runtime import derive_keypair

REPOSITORY = Path(__file__).resolve().parent.parent


def demo_config(replica_count: int = 5) -> ClusterConfig:
    """The demo's public configuration, rebuilt from its (deterministic, local-only) key seed."""
    replica_keys = tuple(derive_keypair(0, f"replica-{i}").public_key for i in range(replica_count))
    return ClusterConfig.create("local", replica_keys, {"client-0": derive_keypair(0, "client-0").public_key})


def test_demo_command_prints_every_verdict_and_a_summary_and_exits_0(tmp_path, capsys):
    certificate_path = tmp_path / "certificate.json"
    code = main(["demo", "--requests", "8", "--seed", "5", "--certificate", str(certificate_path)])
    output = capsys.readouterr().out
    assert code == 0, output
    verdict_lines = [line for line in output.splitlines() if line.startswith("#")]
    assert len(verdict_lines) == 8
    assert all(any(f" {status} " in line for status in ("ALLOW", "DENY")) for line in verdict_lines)
    assert "summary: 8 requests" in output and "latency: p50" in output and "p99" in output
    assert "verified offline: OK" in output and "one byte changed is rejected" in output
    assert "became ALLOW" in output and "safe: no dangerous action was allowed" in output
    certificate = VerdictCertificate.from_json(certificate_path.read_text())
    certificate.verify(demo_config())
    tampered = bytearray(certificate.to_bytes())
    tampered[-1] ^= 0x01
    assert not _verifies(bytes(tampered))


def _verifies(data: bytes) -> bool:
    try:
        return VerdictCertificate.from_bytes(data).is_valid(demo_config())
    except Exception:
        return False


def test_run_demo_summary_adds_up(tmp_path):
    out = io.StringIO()
    summary = run_demo(requests=40, replicas=5, seed=11, concurrency=8, certificate_path=tmp_path / "c.json", out=out)
    assert summary.ok
    assert sum(summary.verdicts.values()) == 40
    assert summary.verdicts["REFUSED"] == 0, out.getvalue()
    for status in summary.verdicts:
        assert sum(counts[status] for counts in summary.by_risk.values()) == summary.verdicts[status]
    assert 0 < summary.latency_p50_ms <= summary.latency_p99_ms <= summary.latency_max_ms < 5000
    assert summary.dangerous > 0 and summary.dangerous_allowed == 0
    # The compromised replica really approved every dangerous action; it changed nothing.
    assert summary.compromised_allow_votes_on_dangerous == summary.dangerous
    assert summary.compromised_replica == 4


@pytest.mark.parametrize("arguments", [
    ["demo", "--requests", "0"], ["demo", "--requests", "many"], ["demo", "--replicas", "3"],
    ["demo", "--concurrency", "1000"], ["demo", "--certificate", "/no/such/directory/c.json"],
    ["demo", "--unknown-flag"], ["frobnicate"], [],
])
def test_user_mistakes_give_one_sentence_and_exit_code_2(arguments, capsys):
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bft"), captured.err


def test_python_dash_m_bft_runs_the_demo(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "bft", "demo", "--requests", "3", "--certificate",
                                str(tmp_path / "c.json")], cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "summary: 3 requests" in completed.stdout and completed.stderr == ""


# ---------------------------------------------------------------------------- the sample stream

def honest_content_policies():
    return [CapabilityDenyList(), ContextRules(), PatternMatcher()]


def votes_for(decisions: list[Decision]) -> tuple[Vote, ...]:
    return tuple(Vote(bytes(32), decision, "", replica_id, bytes(64)) for replica_id, decision in enumerate(decisions))


@pytest.mark.parametrize("kind, action, summary", DANGEROUS_ACTIONS)
def test_every_dangerous_sample_is_denied_by_the_honest_majority_at_every_risk(kind, action, summary):
    config = demo_config()
    for risk in Risk:
        context = PolicyContext(0, "client-0", 1, risk, 10_000)
        decisions = [policy.evaluate(action, context).decision for policy in honest_content_policies()]
        assert decisions == [Decision.DENY] * 3, (kind, risk)
        # Whatever quorum of votes the primary picks, with rate and approve-everything voting ALLOW: DENY.
        all_votes = votes_for(decisions + [Decision.ALLOW, Decision.ALLOW])
        for size in range(config.quorum, config.replica_count + 1):
            for chosen in itertools.combinations(all_votes, size):
                assert decide(config.rules[risk], chosen, 0, 10_000)[0] is Decision.DENY


def test_benign_samples_are_allowed_by_every_honest_policy_and_borderline_ones_are_vetoed():
    samples = generate_samples(300, seed=2)
    benign = [s for s in samples if not s.dangerous and s.kind not in {b[0] for b in BORDERLINE_ACTIONS}]
    assert {s.kind for s in benign} == {"read-file", "list-files", "read-docs", "write-notes", "status-mail",
                                        "small-payment", "deploy"}
    for sample in benign:
        context = PolicyContext(0, "client-0", 1, sample.risk, 10_000)
        for policy in [*honest_content_policies(), RatePolicy()]:
            decision = policy.evaluate(sample.action, context)
            assert decision.decision is Decision.ALLOW, (sample.kind, decision.reason)
    rules = default_rules(5, 1, 4)
    for kind, risk, action, _ in BORDERLINE_ACTIONS:
        context = PolicyContext(0, "client-0", 1, risk, 10_000)
        decisions = [policy.evaluate(action, context).decision for policy in honest_content_policies()]
        assert Decision.DENY in decisions, kind
        assert decide(rules[risk], votes_for(decisions + [Decision.ALLOW, Decision.ALLOW]), 0, 1)[0] is Decision.DENY


def test_samples_are_reproducible_from_the_seed_and_mix_risks():
    assert generate_samples(60, 3) == generate_samples(60, 3)
    assert generate_samples(60, 3) != generate_samples(60, 4)
    samples = generate_samples(200, 0)
    assert {s.risk for s in samples} == set(Risk)
    assert 0.15 < sum(s.dangerous for s in samples) / len(samples) < 0.45
    assert [p.name for p in demo_policies(5)] == ["deny-list", "context-rules", "pattern-matcher", "rate",
                                                 "approve-everything"]
