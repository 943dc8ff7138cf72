"""One benchmark run: the steps in order, their settings (full or quick), and where the results go."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import trio

from ._costs import measure_unit_costs
from ._latency import LatencySettings, closed_loop_latency
from ._message_counts import MessageCountSettings, count_messages
from ._launchers import ClusterSpec, FallbackLauncher
from ._model import floor_report
from ._report import (latency_ratios, load_average, machine_description, print_table, runtime_floor_by_n,
                      summary_by_n, target_report, throughput_ratios, write_results)
from ._scaling import ScalingSettings, simulate_scaling
from ._throughput import ThroughputSettings, measure_throughput

STEPS = ("latency", "throughput", "messages", "scaling", "profile")  # The floor and ceiling are always measured.
FULL_BATCH_REQUESTS = 64  # The core's default max_batch_requests: the ceiling assumes full batches.


@dataclass(frozen=True, slots=True)
class BenchSettings:
    mode: str
    cost_calls: int
    latency_replica_counts: tuple[int, ...]
    latency_storages: tuple[str, ...]
    latency: LatencySettings
    throughput_replica_counts: tuple[int, ...]
    throughput_storage: str
    throughput: ThroughputSettings
    messages: MessageCountSettings
    scaling: ScalingSettings
    profile: LatencySettings
    steps: tuple[str, ...] = STEPS
    plots: bool = True

    def __post_init__(self) -> None:
        assert set(self.steps) <= set(STEPS), self.steps


FULL = BenchSettings(
    mode="full", cost_calls=1000,
    latency_replica_counts=(4, 7), latency_storages=("volatile", "durable"),
    latency=LatencySettings(requests=200, warmup_requests=20, max_duration_s=20.0),
    throughput_replica_counts=(4, 7), throughput_storage="durable",
    throughput=ThroughputSettings(client_count=8, point_s=3.0, probe_requests=12, growth=1.5, max_steps=10,
                                  latency_bound_ms=1000.0),
    messages=MessageCountSettings(replica_counts=(4, 7), clients=8, requests=300),
    scaling=ScalingSettings(replica_counts=(4, 7, 10, 16, 25, 31, 49, 64, 100), requests=3, budget_s=60.0),
    profile=LatencySettings(requests=150, warmup_requests=10, max_duration_s=15.0, measure_idle=False),
)
QUICK = BenchSettings(
    mode="quick", cost_calls=40,
    latency_replica_counts=(4,), latency_storages=("volatile", "durable"),
    latency=LatencySettings(requests=8, warmup_requests=2, idle_settle_s=0.1, idle_measure_s=0.3),
    throughput_replica_counts=(4,), throughput_storage="durable",
    throughput=ThroughputSettings(client_count=2, point_s=0.3, probe_requests=2, growth=2.0, max_steps=1,
                                  latency_bound_ms=1000.0),
    messages=MessageCountSettings(replica_counts=(4, 7), clients=8, requests=24),
    scaling=ScalingSettings(replica_counts=(4, 7), requests=1, budget_s=20.0),
    profile=LatencySettings(requests=8, warmup_requests=2, measure_idle=False),
)


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class _StepClock:
    """Wall-clock seconds per step, so a run shows where its minutes went."""

    def __init__(self) -> None:
        self.durations_s: dict[str, float] = {}
        self._started = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.durations_s[step] = round(now - self._started, 2)
        self._started = now


def run_bench(settings: BenchSettings, launcher: FallbackLauncher, results_root: Path, scratch: Path,
              out: TextIO = sys.stdout) -> dict:
    """Run every step of ``settings``, write the JSON (and plots), print the table; return the results."""
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    run_id, directory = _new_run_directory(results_root, settings.mode)
    machine = machine_description()
    clock = _StepClock()
    _progress("measuring unit costs (sign, verify, codec, SQLite commit, loopback hop, policy)")
    costs = measure_unit_costs(calls=settings.cost_calls, directory=scratch, full_batch_requests=FULL_BATCH_REQUESTS)
    counts = sorted({4, 7, *settings.latency_replica_counts, *settings.throughput_replica_counts})
    floor = {"unit_costs": costs.to_json(),
             "by_n": {str(n): floor_report(costs, n, FULL_BATCH_REQUESTS, machine["cores"]) for n in counts}}
    clock.lap("floor")
    results: dict = {"schema": "bft-bench/1", "run_id": run_id, "date": started_at, "mode": settings.mode,
                     "machine": machine,
                     "launcher": launcher.name, "floor": floor, "latency": [], "throughput": [], "messages": [],
                     "scaling": None, "profile": None}
    if "latency" in settings.steps:
        results["latency"] = trio.run(_latency_runs, settings, launcher, scratch)
        clock.lap("latency")
    if "throughput" in settings.steps:
        results["throughput"] = trio.run(_throughput_runs, settings, launcher, scratch)
        clock.lap("throughput")
    results["launcher"], results["launcher_fallback"] = launcher.name, launcher.fallback_reason
    if "messages" in settings.steps:
        _progress(f"counting messages and signature verifications per verdict in the simulator, "
                  f"n = {', '.join(map(str, settings.messages.replica_counts))}")
        results["messages"] = count_messages(settings.messages)
        clock.lap("messages")
    if "scaling" in settings.steps:
        _progress(f"simulating n = {', '.join(map(str, settings.scaling.replica_counts))} on a WAN "
                  f"(budget {settings.scaling.budget_s:g} s)")
        results["scaling"] = simulate_scaling(costs, settings.scaling)
        clock.lap("scaling")
    if "profile" in settings.steps:
        _progress("profiling a latency run (in-process, durable, n = 4) with pyinstrument")
        from ._profile import profile_latency_run
        results["profile"] = profile_latency_run(ClusterSpec(4, "durable", 1, scratch), settings.profile,
                                                 directory / "profile.html")
        clock.lap("profile")
    latency_rows = latency_ratios(floor["by_n"], results["latency"])
    throughput_rows = throughput_ratios(floor["by_n"], results["throughput"])
    results["summary_by_n"] = summary_by_n(latency_rows, throughput_rows, results["latency"], results["messages"])
    results["runtime_floor"] = runtime_floor_by_n(floor, results["messages"])
    results["ratios"] = {"latency": latency_rows, "throughput": throughput_rows,
                         "targets": target_report(results["summary_by_n"])}
    results["files"] = {"json": str(directory / "results.json"),
                        "plots": _plots(results, directory) if settings.plots else []}
    clock.lap("plots")
    results["step_durations_s"] = clock.durations_s
    results["duration_s"] = round(time.perf_counter() - started, 1)
    machine["load_average_at_end"] = load_average()
    write_results(results, directory)
    print_table(results, out)
    return results


def _new_run_directory(results_root: Path, mode: str) -> tuple[str, Path]:
    """A fresh folder named after the start time (and a counter, for runs started in the same second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if mode == "quick" else "")
    for attempt in range(1, 100):
        run_id = stamp if attempt == 1 else f"{stamp}-{attempt}"
        try:
            (results_root / run_id).mkdir(parents=True)
            return run_id, results_root / run_id
        except FileExistsError:
            continue
    raise FileExistsError(f"{results_root} already holds 99 runs started at {stamp}")


async def _latency_runs(settings: BenchSettings, launcher: FallbackLauncher, scratch: Path) -> list[dict]:
    runs = []
    for replica_count in settings.latency_replica_counts:
        for storage in settings.latency_storages:
            _progress(f"latency: n = {replica_count}, {storage} storage, {settings.latency.requests} requests "
                      f"({launcher.name})")
            runs.append(await closed_loop_latency(launcher, ClusterSpec(replica_count, storage, 1, scratch),
                                                  settings.latency))
    return runs


async def _throughput_runs(settings: BenchSettings, launcher: FallbackLauncher, scratch: Path) -> list[dict]:
    runs = []
    for replica_count in settings.throughput_replica_counts:
        _progress(f"throughput: n = {replica_count}, {settings.throughput_storage} storage, "
                  f"{settings.throughput.client_count} clients, open-loop ramp ({launcher.name})")
        spec = ClusterSpec(replica_count, settings.throughput_storage, settings.throughput.client_count, scratch)
        runs.append(await measure_throughput(launcher, spec, settings.throughput))
    return runs


def _plots(results: dict, directory: Path) -> list[str]:
    from ._plots import plot_latency_cdf, plot_scaling, plot_throughput
    floor_by_n = results["floor"]["by_n"]
    written = []
    if results["latency"]:
        written.append(plot_latency_cdf(results["latency"], floor_by_n, directory / "latency_cdf.png"))
    if results["throughput"]:
        written.append(plot_throughput(results["throughput"], floor_by_n, directory / "throughput.png"))
    if results["scaling"] and results["scaling"]["points"]:
        written.append(plot_scaling(results["scaling"], directory / "latency_vs_n.png"))
    return [str(path) for path in written]


def with_steps(settings: BenchSettings, steps: tuple[str, ...], plots: bool) -> BenchSettings:
    return replace(settings, steps=steps, plots=plots)
