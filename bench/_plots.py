"""Plots as PNG files: latency CDFs, throughput against offered load, and latency and messages against n."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # Files only: never open a window, work without a display.
    import matplotlib.pyplot as pyplot
    return pyplot


def plot_latency_cdf(latency_runs: list[dict], floor_by_n: dict, path: Path) -> Path:
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for run in latency_runs:
        values = sorted(run["latencies_ms"])
        if not values:
            continue
        fractions = [(index + 1) / len(values) for index in range(len(values))]
        label = f"n={run['replica_count']} {run['storage']}"
        line, = axes.step(values, fractions, where="post", label=label)
        floors = floor_by_n[str(run["replica_count"])]["latency_floor_by_risk"]["low"]
        floor_ms = floors["durable_ms" if run["storage"] == "durable" else "memory_ms"]
        axes.axvline(floor_ms, color=line.get_color(), linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("verdict latency (ms, log scale); dotted: floor of the same n and storage")
    axes.set_ylabel("fraction of verdicts")
    axes.set_title("Latency CDF, one client, closed loop")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, pyplot, path)


def plot_throughput(throughput_runs: list[dict], floor_by_n: dict, path: Path) -> Path:
    pyplot = _pyplot()
    figure, (rate_axes, latency_axes) = pyplot.subplots(1, 2, figsize=(12, 5))
    for run in throughput_runs:
        points = sorted(run["ramp"] + [run["at_50_percent"], run["at_90_percent"]], key=lambda p: p["offered_per_s"])
        offered = [p["offered_per_s"] for p in points]
        label = f"n={run['replica_count']} {run['storage']}"
        line, = rate_axes.plot(offered, [p["achieved_per_s"] for p in points], marker="o", label=label)
        ceiling = floor_by_n[str(run["replica_count"])]["throughput_ceiling_per_s"]
        rate_axes.axhline(ceiling, color=line.get_color(), linestyle=":", linewidth=1)
        latency_axes.plot(offered, [p["latency"].get("p50_ms") for p in points], marker="o", color=line.get_color(),
                          label=f"{label} p50")
        latency_axes.plot(offered, [p["latency"].get("p99_ms") for p in points], marker="x", linestyle="--",
                          color=line.get_color(), label=f"{label} p99")
    offered_all = [p["offered_per_s"] for run in throughput_runs
                   for p in run["ramp"] + [run["at_50_percent"], run["at_90_percent"]]]
    if offered_all:  # The diagonal starts at the lowest offered rate: zero has no place on a log axis.
        low, top = min(offered_all), max(offered_all)
        rate_axes.plot([low, top], [low, top], color="grey", linewidth=0.8, label="achieved = offered")
    rate_axes.set_xlabel("offered load (requests/s)")
    rate_axes.set_ylabel("verdicts/s (dotted: CPU ceiling)")
    rate_axes.set_yscale("log")
    rate_axes.set_title("Throughput against offered load")
    rate_axes.legend()
    latency_axes.set_xlabel("offered load (requests/s)")
    latency_axes.set_ylabel("latency from scheduled arrival (ms)")
    latency_axes.set_yscale("log")
    latency_axes.set_title("Latency against offered load")
    latency_axes.legend(fontsize="small")
    for axes in (rate_axes, latency_axes):
        axes.grid(True, which="both", alpha=0.3)
    return _save(figure, pyplot, path)


def plot_scaling(scaling: dict, path: Path) -> Path:
    pyplot = _pyplot()
    figure, (latency_axes, message_axes) = pyplot.subplots(1, 2, figsize=(12, 5))
    points = scaling["points"]
    counts = [p["replica_count"] for p in points]
    latency_axes.plot(counts, [p["latency"].get("p50_ms") for p in points], marker="o", label="p50")
    latency_axes.plot(counts, [p["latency"].get("max_ms") for p in points], marker="x", linestyle="--", label="max")
    latency_axes.set_xlabel("replicas (n)")
    latency_axes.set_ylabel("verdict latency (ms)")
    latency_axes.set_title("Simulated WAN latency against n")
    latency_axes.legend()
    message_axes.plot(counts, [p["messages_per_verdict"] for p in points], marker="o", label="measured")
    message_axes.plot(counts, [3 * n * n for n in counts], linestyle=":", color="grey", label="3 n^2")
    message_axes.set_xscale("log")
    message_axes.set_yscale("log")
    message_axes.set_xlabel("replicas (n, log scale)")
    message_axes.set_ylabel("messages per verdict (log scale)")
    message_axes.set_title("Messages per verdict against n")
    message_axes.legend()
    for axes in (latency_axes, message_axes):
        axes.grid(True, which="both", alpha=0.3)
    return _save(figure, pyplot, path)


def _save(figure, pyplot, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
