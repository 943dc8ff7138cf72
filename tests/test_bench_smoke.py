"""The benchmark suite still runs: each step in its smallest form yields output of the right shape.

Speed is never asserted here (that is the benchmark's own output); only that
every section, number and ratio is present, positive and consistent.
"""

from __future__ import annotations

import io
import json

import pytest

from bench import QUICK, choose_launcher, run_bench
from bench.__main__ import main
from bench._costs import UnitCosts
from bench._model import critical_path, cpu_per_verdict_us, latency_floor_ms, path_totals
from bench._stats import percentile, summarize_ms
from bft.core import Risk, max_faulty, quorum_size

pytestmark = pytest.mark.slow  # a quick benchmark run: make test runs it, make test-fast does not

RISKS = ("low", "medium", "high", "critical")


def _costs(**changes) -> UnitCosts:
    values = dict(sign_us=50.0, sign_raw_us=45.0, verify_us=120.0, verify_cached_us=5.0, verify_raw_us=110.0,
                  encode_us={kind: 3.0 for kind in ("request", "vote", "preprepare", "preprepare_full", "prepare",
                                                    "commit", "reply")},
                  decode_us={kind: 10.0 for kind in ("request", "vote", "preprepare", "preprepare_full", "prepare",
                                                     "commit", "reply")},
                  message_bytes={}, sqlite_commit_us=200.0, sqlite_commit_cpu_us=150.0, hop_us=100.0, message_cpu_us=80.0,
                  policy_us=40.0, full_batch_requests=64)
    values.update(changes)
    return UnitCosts(**values)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    results = run_bench(QUICK, choose_launcher("in-process"), root / "results", root, out=printed)
    return results, printed.getvalue()


def _positive(value) -> bool:
    return _number(value) and value > 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_the_run_writes_its_json_and_prints_the_table(quick_run):
    results, printed = quick_run
    with open(results["files"]["json"]) as file:
        assert json.load(file) == json.loads(json.dumps(results))
    for heading in ("p50/floor", "p99/floor", "thr/ceiling", "messages/verdict", "msgs/verdict", "verifs/verdict",
                    "idle ms/s/replica", "issue 16 targets", "load average", results["date"]):
        assert heading in printed
    assert set(results["step_durations_s"]) == {"floor", "latency", "throughput", "messages", "scaling", "profile",
                                                "plots"}
    assert results["machine"]["load_average_at_start"] is not None
    assert results["machine"]["load_average_at_end"] is not None
    assert results["machine"]["cores"] >= 1 and results["launcher"] == "in-process"


def test_floor_and_ceiling_are_positive_and_durable_costs_more(quick_run):
    floor = quick_run[0]["floor"]
    costs = floor["unit_costs"]
    for name in ("sign_us", "sign_raw_us", "verify_us", "verify_cached_us", "verify_raw_us", "sqlite_commit_us",
                 "hop_us", "policy_us"):
        assert _positive(costs[name]), name
    assert all(_positive(costs[table][kind]) for table in ("encode_us", "decode_us") for kind in costs[table])
    assert set(floor["by_n"]) >= {"4", "7"}
    for report in floor["by_n"].values():
        assert report["critical_path_totals_low_risk"]["hops"] == 6
        for risk in RISKS:
            floors = report["latency_floor_by_risk"][risk]
            assert 0 < floors["memory_ms"] < floors["durable_ms"]
        assert _positive(report["throughput_ceiling_per_s"]) and _positive(report["disk_ceiling_per_s"])
        assert report["throughput_ceiling_per_s"] >= report["throughput_ceiling_unbatched_per_s"]


def test_latency_runs_cover_every_risk_class_with_ordered_percentiles(quick_run):
    runs = quick_run[0]["latency"]
    assert {(run["replica_count"], run["storage"]) for run in runs} == {(4, "volatile"), (4, "durable")}
    for run in runs:
        assert sum(run["verdicts"].values()) == run["requests"] == QUICK.latency.requests
        assert set(run["by_risk"]) == set(RISKS)
        summaries = [summary for summary in run["by_risk"].values() if summary["count"]] + [run["all"]]
        for summary in summaries:
            assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
        assert len(run["latencies_ms"]) == run["all"]["count"]
        assert _positive(run["cpu_ms_per_verdict"])
        idle = run["idle"]
        assert _positive(idle["measured_s"]) and idle["scope"]
        assert _number(idle["cpu_ms_per_s_per_replica"]) and idle["cpu_ms_per_s_per_replica"] >= 0
        assert idle["percent_of_core_per_replica"] == pytest.approx(idle["cpu_ms_per_s_per_replica"] / 10, abs=0.001)


def test_throughput_reports_saturation_and_the_two_measured_loads(quick_run):
    (run,) = quick_run[0]["throughput"]
    assert _positive(run["saturation_per_s"]) and _positive(run["one_client_p50_ms"]) and run["ramp"]
    assert run["ramp"][0]["offered_per_s"] == pytest.approx(1000 / run["one_client_p50_ms"], abs=0.1)
    for key, fraction in (("at_50_percent", 0.5), ("at_90_percent", 0.9)):
        point = run[key]
        assert point["fraction_of_saturation"] == fraction
        assert point["offered_per_s"] == pytest.approx(fraction * run["saturation_per_s"], abs=0.1)
        assert set(point["statuses"]) == {"ALLOW", "DENY", "REFUSED", "shed"}
        assert sum(point["statuses"].values()) == point["arrivals"]
        assert sum(point["deny_reasons"].values()) <= point["statuses"]["DENY"]
        assert _positive(point["cpu_ms_per_verdict"])


def test_scaling_counts_two_phases_through_the_primary_per_verdict(quick_run):
    scaling = quick_run[0]["scaling"]
    assert [point["replica_count"] for point in scaling["points"]] == [4, 7] and not scaling["skipped"]
    for point in scaling["points"]:
        n = point["replica_count"]
        assert point["completed"] == point["requests"]
        # Votes, prepares and commits go to the primary, which forwards each quorum as one bundle (SPEC.md
        # 11b, 11c); requests and replies go between the client and every replica.
        assert point["messages_per_verdict"] >= 5 * (n - 1) + 2 * n
        assert _positive(point["latency"]["p50_ms"]) and point["highest_view"] == 0


def test_messages_and_verifications_per_verdict_are_counted_by_type_at_4_and_7(quick_run):
    counts = quick_run[0]["messages"]
    assert [row["replica_count"] for row in counts] == [4, 7]
    for row in counts:
        n = row["replica_count"]
        assert row["verdicts"] == row["requests"] == QUICK.messages.requests
        by_type = row["messages_per_verdict_by_type"]
        assert {"Request", "Vote", "PrePrepare", "Prepare", "Commit", "Bundle", "Reply"} <= set(by_type)
        assert all(_positive(count) for count in by_type.values())
        assert sum(by_type.values()) == pytest.approx(row["messages_per_verdict"], abs=0.1)
        assert by_type["Request"] == by_type["Reply"] == n  # Every client sends to and hears from every replica.
        parties = row["verifications_per_verdict_by_party"]
        assert _positive(parties["replicas"]) and _positive(parties["clients"])
        assert parties["replicas"] + parties["clients"] == pytest.approx(row["verifications_per_verdict"], abs=0.1)
    assert counts[0]["messages_per_verdict"] < counts[1]["messages_per_verdict"]
    assert counts[0]["verifications_per_verdict"] < counts[1]["verifications_per_verdict"]
    for row in counts:  # Every replica writes its vote on every request; a batch shares its phases' writes.
        assert row["persisting_rounds_per_verdict"] >= row["replica_count"]


def test_the_runtime_floor_adds_messages_and_commits_to_the_model_and_stays_below_the_measured_cpu(quick_run):
    results = quick_run[0]
    rows = {row["replica_count"]: row for row in results["runtime_floor"]}
    costs = results["floor"]["unit_costs"]
    assert _positive(costs["message_cpu_us"]) and _positive(costs["sqlite_commit_cpu_us"])
    for n, row in rows.items():
        counts = next(count for count in results["messages"] if count["replica_count"] == n)
        assert row["messages_ms"] == pytest.approx(counts["messages_per_verdict"] * costs["message_cpu_us"] / 1000,
                                                   abs=0.01)
        assert row["floor_ms"] == pytest.approx(row["model_ms"] + row["messages_ms"] + row["commits_ms"], abs=0.02)
    assert "CPU floor of this design on this runtime" in quick_run[1]


def test_the_summary_has_every_headline_figure_for_each_n(quick_run):
    summary = {row["replica_count"]: row for row in quick_run[0]["summary_by_n"]}
    assert set(summary) == {4, 7}
    measured_at_4 = ("floor_ms", "p50_ms", "p99_ms", "p50_over_floor", "p99_over_floor", "cpu_ms_per_verdict",
                     "model_cpu_ms_per_verdict", "saturation_per_s", "p99_ms_at_90_percent",
                     "cpu_ms_per_verdict_at_90_percent", "messages_per_verdict",
                     "verifications_per_verdict", "idle_cpu_ms_per_s_per_replica", "idle_percent_of_core_per_replica")
    assert all(_number(summary[4][field]) for field in measured_at_4)
    assert summary[4]["latency_storage"] == "durable" and summary[4]["latency_risk"] == "low"
    # The quick run measures latency and throughput at n = 4 only; the simulator counts n = 7 too.
    assert _positive(summary[7]["messages_per_verdict"]) and _positive(summary[7]["verifications_per_verdict"])
    assert summary[7]["p50_ms"] is None and summary[7]["saturation_per_s"] is None


def test_profile_accounts_for_all_sampled_time(quick_run):
    profile = quick_run[0]["profile"]
    assert _positive(profile["sampled_s"])
    assert sum(profile["self_time_by_category"].values()) == pytest.approx(1.0, abs=0.01)
    assert profile["top_self_time"] and profile["top_inclusive_project"]
    assert all(0 <= row["fraction"] <= 1 for row in profile["top_self_time"])


def test_ratios_and_targets_are_present(quick_run):
    results = quick_run[0]
    ratios = results["ratios"]
    assert ratios["latency"] and all(_positive(row["p50_over_floor"]) and _positive(row["p99_over_floor"])
                                     for row in ratios["latency"])
    assert all(_positive(row["throughput_over_ceiling"]) for row in ratios["throughput"])
    targets = {(target["figure"], target["replica_count"]): target for target in ratios["targets"]}
    assert set(targets) == {("p50_over_floor", 4), ("p99_over_floor", 4), ("cpu_ms_per_verdict", 4),
                            ("cpu_ms_per_verdict", 7), ("saturation_per_s", 4), ("saturation_per_s", 7),
                            ("idle_percent_of_core_per_replica", 4), ("idle_percent_of_core_per_replica", 7)}
    summary = {row["replica_count"]: row for row in results["summary_by_n"]}
    for (figure, n), target in targets.items():
        assert target["value"] == summary[n][figure]
        if target["value"] is None:
            assert target["met"] is None and n == 7  # The quick run measures real processes at n = 4 only.
            continue
        assert _number(target["value"]) and isinstance(target["met"], bool)
        kind, bound = target["target"].rsplit(" ", 1)
        within = target["value"] <= float(bound) if kind == "at most" else target["value"] >= float(bound)
        assert target["met"] == within
    for path in results["files"]["plots"]:
        with open(path, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(results["files"]["plots"]) == 3


@pytest.mark.parametrize("replica_count", [4, 7, 10, 100])
def test_the_critical_path_counts_each_phase(replica_count):
    f = max_faulty(replica_count)
    q = quorum_size(replica_count, f)
    low = path_totals(critical_path(replica_count, Risk.LOW))
    assert (low["hops"], low["signs"], low["fsyncs"], low["policy_evaluations"]) == (6, 6, 5, 1)
    # request + (q-1) votes + pre-prepare + 2(q-1) prepares and commits + client: 2(f+1) replies, request, q votes.
    assert low["verifies"] == 1 + (q - 1) + 1 + 2 * (q - 1) + 2 * (f + 1) + 1 + q
    high = path_totals(critical_path(replica_count, Risk.HIGH))
    assert high["verifies"] - low["verifies"] == 2 * (replica_count - q)
    costs = _costs()
    durable = latency_floor_ms(costs, replica_count, Risk.LOW, durable=True)
    volatile = latency_floor_ms(costs, replica_count, Risk.LOW, durable=False)
    assert durable - volatile == pytest.approx(5 * costs.sqlite_commit_us / 1000)


def test_batching_amortizes_cpu_and_more_replicas_cost_more():
    costs = _costs()
    assert cpu_per_verdict_us(costs, 4, 64) < cpu_per_verdict_us(costs, 4, 1)
    assert cpu_per_verdict_us(costs, 4, 64) < cpu_per_verdict_us(costs, 7, 64)


def test_percentiles_use_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)
    assert summarize_ms([]) == {"count": 0}
    assert summarize_ms([3.0, 1.0, 2.0])["p50_ms"] == 2.0


def test_a_bad_step_is_one_sentence_and_exit_code_two(capsys):
    assert main(["--quick", "--steps", "latency,nonsense"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "unknown step 'nonsense'; the steps are latency, throughput, messages, scaling, profile"
