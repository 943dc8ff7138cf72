"""Results: the machine they came from, the ratios to floor and ceiling, the JSON file and the printed table.

Targets from issue 7 are *reported* next to each ratio, never asserted: a
benchmark says how far the system is from the floor; it does not fail a build.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TextIO

SCHEMA = "bft-bench/1"
HEADLINE_RISK = "low"
# Issue 7's targets, as (ratio name, bound kind, bound).
TARGETS = (("p50_over_floor", "at most", 2.0), ("p99_over_floor", "at most", 5.0),
           ("throughput_over_ceiling", "at least", 0.5))


def machine_description() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"cores": cores, "cpu": _cpu_model(), "memory_gb": _memory_gb(), "platform": platform.platform(),
            "python": platform.python_version(), "machine": platform.machine(),
            # Other work on the machine inflates every figure, the floor's included: say how busy it was.
            "load_average_at_start": load_average()}


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), where the system reports one."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def latency_ratios(floor_by_n: dict, latency_runs: list[dict]) -> list[dict]:
    """p50/floor and p99/floor for each run and risk class, against the floor of the same storage kind."""
    rows = []
    for run in latency_runs:
        report = floor_by_n[str(run["replica_count"])]
        floors = report["latency_floor_by_risk"]
        floor_key = "durable_ms" if run["storage"] == "durable" else "memory_ms"
        for risk, summary in run["by_risk"].items():
            if not summary["count"]:
                continue
            floor_ms = floors[risk][floor_key]
            rows.append({"replica_count": run["replica_count"], "storage": run["storage"], "risk": risk,
                         "floor_ms": floor_ms, "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
                         "p50_over_floor": round(summary["p50_ms"] / floor_ms, 2),
                         "p99_over_floor": round(summary["p99_ms"] / floor_ms, 2),
                         "cpu_ms_per_verdict": run["cpu_ms_per_verdict"],
                         "model_cpu_ms_per_verdict": round(report["cpu_per_verdict_unbatched_us"] / 1000, 3)})
    return rows


def throughput_ratios(floor_by_n: dict, throughput_runs: list[dict]) -> list[dict]:
    rows = []
    for run in throughput_runs:
        ceiling = floor_by_n[str(run["replica_count"])]["throughput_ceiling_per_s"]
        rows.append({"replica_count": run["replica_count"], "storage": run["storage"],
                     "ceiling_per_s": ceiling, "saturation_per_s": run["saturation_per_s"],
                     "throughput_over_ceiling": round(run["saturation_per_s"] / ceiling, 4),
                     "p50_ms_at_50_percent": run["at_50_percent"]["latency"].get("p50_ms"),
                     "p99_ms_at_90_percent": run["at_90_percent"]["latency"].get("p99_ms")})
    return rows


def target_report(latency_rows: list[dict], throughput_rows: list[dict]) -> list[dict]:
    """Each issue-7 target with the measured ratio it is about (n = 4; durable, low risk for latency)."""
    latency = next((row for row in latency_rows if row["replica_count"] == 4 and row["storage"] == "durable"
                    and row["risk"] == HEADLINE_RISK), None)
    throughput = next((row for row in throughput_rows if row["replica_count"] == 4), None)
    report = []
    for name, kind, bound in TARGETS:
        row = throughput if name == "throughput_over_ceiling" else latency
        value = row[name] if row else None
        met = None if value is None else (value <= bound if kind == "at most" else value >= bound)
        report.append({"ratio": name, "target": f"{kind} {bound:g}", "value": value, "met": met})
    return report


def write_results(results: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    return path


def print_table(results: dict, out: TextIO) -> None:
    machine = results["machine"]
    print(f"\nbft benchmark {results['run_id']}: {machine['cores']} cores, {machine['cpu']}, "
          f"Python {machine['python']}, load average {machine['load_average_at_start']} at the start and "
          f"{machine['load_average_at_end']} at the end; launcher {results['launcher']}"
          + (f" (fell back: {results['launcher_fallback']})" if results.get("launcher_fallback") else ""), file=out)
    _print_floor(results.get("floor"), out)
    ratios = results["ratios"]
    if ratios["latency"]:
        print(f"\nlatency, one client, closed loop ({HEADLINE_RISK} risk; floor = critical path at n):", file=out)
        print(f"  {'n':>3} {'storage':<9} {'floor ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'p50/floor':>10} "
              f"{'p99/floor':>10} {'CPU ms/verdict (model)':>23}", file=out)
        for row in (r for r in ratios["latency"] if r["risk"] == HEADLINE_RISK):
            cpu = f"{row['cpu_ms_per_verdict']:.1f} ({row['model_cpu_ms_per_verdict']:.1f})"
            print(f"  {row['replica_count']:>3} {row['storage']:<9} {row['floor_ms']:>9.2f} {row['p50_ms']:>8.2f} "
                  f"{row['p99_ms']:>8.2f} {row['p50_over_floor']:>10.1f} {row['p99_over_floor']:>10.1f} {cpu:>23}",
                  file=out)
    if ratios["throughput"]:
        print("\nthroughput, open loop (ceiling = cores / CPU per verdict with full batches):", file=out)
        print(f"  {'n':>3} {'storage':<9} {'ceiling/s':>10} {'saturation/s':>13} {'thr/ceiling':>12} "
              f"{'p50 @50% ms':>12} {'p99 @90% ms':>12}", file=out)
        for row in ratios["throughput"]:
            print(f"  {row['replica_count']:>3} {row['storage']:<9} {row['ceiling_per_s']:>10.0f} "
                  f"{row['saturation_per_s']:>13.1f} {row['throughput_over_ceiling']:>12.3f} "
                  f"{_number(row['p50_ms_at_50_percent']):>12} {_number(row['p99_ms_at_90_percent']):>12}", file=out)
    _print_scaling(results.get("scaling"), out)
    if ratios["targets"]:
        print("\nissue 7 targets (reported, not asserted):", file=out)
        for target in ratios["targets"]:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
            print(f"  {target['ratio']:<24} {_number(target['value']):>8}  target {target['target']:<12} {verdict}",
                  file=out)
    print(f"\nwrote {results['files']['json']} in {results['duration_s']:.0f} s", file=out)


def _print_floor(floor: dict | None, out: TextIO) -> None:
    if not floor:
        return
    costs = floor["unit_costs"]
    print(f"\nmeasured unit costs (us): sign {costs['sign_us']:.0f} (pynacl {costs['sign_raw_us']:.0f}), "
          f"verify {costs['verify_us']:.0f} (pynacl {costs['verify_raw_us']:.0f}, "
          f"cached {costs['verify_cached_us']:.0f}), "
          f"encode/decode vote {costs['encode_us']['vote']:.0f}/{costs['decode_us']['vote']:.0f}, "
          f"SQLite commit {costs['sqlite_commit_us']:.0f}, loopback hop {costs['hop_us']:.0f}, "
          f"policy {costs['policy_us']:.0f}", file=out)
    for n, report in floor["by_n"].items():
        totals = report["critical_path_totals_low_risk"]
        low = report["latency_floor_by_risk"]["low"]
        print(f"  n={n}: critical path {totals['hops']} hops, {totals['signs']} signs, {totals['verifies']} verifies, "
              f"{totals['decodes']} decodes, {totals['fsyncs']} fsyncs -> floor {low['memory_ms']:.2f} ms "
              f"(volatile), {low['durable_ms']:.2f} ms (durable); "
              f"CPU/verdict {report['cpu_per_verdict_us'] / 1000:.1f} ms "
              f"-> ceiling {report['throughput_ceiling_per_s']:.0f}/s (batches of {report['ceiling_batch_requests']}), "
              f"{report['throughput_ceiling_unbatched_per_s']:.0f}/s unbatched", file=out)


def _print_scaling(scaling: dict | None, out: TextIO) -> None:
    if not scaling:
        return
    print("\nscaling by simulation (WAN, calibrated CPU; latency of one verdict at a time):", file=out)
    print(f"  {'n':>3} {'p50 ms':>8} {'max ms':>8} {'messages/verdict':>17} {'kB/verdict':>11}", file=out)
    for point in scaling["points"]:
        latency = point["latency"]
        print(f"  {point['replica_count']:>3} {_number(latency.get('p50_ms')):>8} {_number(latency.get('max_ms')):>8} "
              f"{point['messages_per_verdict']:>17.0f} {point['bytes_per_verdict'] / 1000:>11.1f}", file=out)
    for skipped in scaling["skipped"]:
        print(f"  {skipped['replica_count']:>3} skipped: {skipped['reason']}", file=out)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
