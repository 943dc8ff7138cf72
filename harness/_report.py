"""Run reports: ``history.jsonl``, ``results.json`` and a self-contained ``report.html``.

The HTML page embeds its plots as base64 PNG (latency and throughput over
time, both shaded with the fault timeline, plus the timeline itself) and a
per-replica vote table built from the certificates' vote sets.  A replica that
approves far more often than its peers (an ``approve-everything`` replica, say)
is flagged there: its lies cannot change a verdict, but they do show up.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from pathlib import Path
from typing import Any

from ._history import EventType, History
from ._swarm import RunResult

FLAG_MARGIN = 0.25  # How far above the peers' median approval rate a replica must be to be flagged.
FLAG_MIN_VOTES = 5
THROUGHPUT_BUCKET_MS = 250
FAULT_COLORS = {"partition": "tab:orange", "network": "tab:blue", "crash": "tab:red", "byzantine": "tab:purple"}


# ----------------------------------------------------------------- vote statistics


def vote_statistics(history: History, replica_count: int) -> list[dict[str, Any]]:
    """Allow and deny votes per replica over each certified key once, with outliers flagged."""
    counts = {replica_id: [0, 0] for replica_id in range(replica_count)}
    seen = set()
    for event in history:
        if event.type is not EventType.OK or event.key in seen:
            continue  # A retry carries the same certificate again; count each key's votes once.
        seen.add(event.key)
        for replica_id, decision in event.votes:
            if replica_id in counts:
                counts[replica_id][0 if decision == "ALLOW" else 1] += 1
    rows = [{"replica": replica_id, "allow": allow, "deny": deny, "votes": allow + deny,
             "approval_rate": round(allow / (allow + deny), 3) if allow + deny else None}
            for replica_id, (allow, deny) in sorted(counts.items())]
    for row in rows:
        row["flagged"], row["flag_reason"] = _flag(row, rows)
    return rows


def _flag(row: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[bool, str]:
    peers = [other["approval_rate"] for other in rows
             if other is not row and other["approval_rate"] is not None and other["votes"] >= FLAG_MIN_VOTES]
    if row["votes"] < FLAG_MIN_VOTES or not peers:
        return False, ""
    median = statistics.median(peers)
    if row["approval_rate"] - median >= FLAG_MARGIN:
        return True, f"approves {row['approval_rate']:.0%} of requests, peers' median is {median:.0%}"
    return False, ""


# ----------------------------------------------------------------- plots


def _fault_family(kind: str) -> str:
    return kind.split("-")[0]


def _shade_faults(axes, result: RunResult) -> None:
    end_s = (result.end_ms - result.start_ms) / 1000
    for event in result.faults:
        if event.applied_start_ms is None:
            continue
        stop = end_s if event.applied_end_ms is None else event.applied_end_ms / 1000
        axes.axvspan(event.applied_start_ms / 1000, stop, color=FAULT_COLORS[_fault_family(event.kind)], alpha=0.12)
    axes.axvline((result.liveness_start_ms - result.start_ms) / 1000, color="black", linestyle="--", linewidth=1)


def plot_png(result: RunResult) -> bytes:
    """Latency, throughput and the fault timeline, one above the other, as PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.patches import Patch

    operations = result.history.operations()
    figure, (latency, throughput, timeline) = pyplot.subplots(3, 1, figsize=(10, 9), sharex=True,
                                                              gridspec_kw={"height_ratios": [3, 2, 2]})
    _plot_latency(latency, operations, result.start_ms)
    _plot_throughput(throughput, operations, result)
    _plot_timeline(timeline, result)
    for axes in (latency, throughput):
        _shade_faults(axes, result)
    handles = [Patch(color=color, alpha=0.3, label=family) for family, color in FAULT_COLORS.items()]
    latency.legend(handles=handles + latency.get_legend_handles_labels()[0], fontsize="small", loc="upper right")
    timeline.set_xlabel("simulated time since start (s); dashed line: liveness phase begins")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    pyplot.close(figure)
    return buffer.getvalue()


def _plot_latency(axes, operations, start_ms: int) -> None:
    for verdict, color in (("ALLOW", "tab:green"), ("DENY", "tab:red")):
        points = [((op.invoke.time_ms - start_ms) / 1000, op.completion.time_ms - op.invoke.time_ms)
                  for op in operations if op.outcome is EventType.OK and op.verdict == verdict]
        if points:
            axes.scatter(*zip(*points), s=12, color=color, label=f"ok {verdict}")
    unknown = [(op.invoke.time_ms - start_ms) / 1000 for op in operations if op.outcome is EventType.INFO]
    if unknown:
        top = max([op.completion.time_ms - op.invoke.time_ms for op in operations if op.completion] + [1])
        axes.scatter(unknown, [top] * len(unknown), marker="x", color="grey", label="info (unknown)")
    axes.set_ylabel("latency (ms)")
    axes.set_title("latency by invocation time")


def _plot_throughput(axes, operations, result: RunResult) -> None:
    buckets = [0] * (1 + (result.end_ms - result.start_ms) // THROUGHPUT_BUCKET_MS)
    for op in operations:
        if op.outcome is EventType.OK:
            buckets[min(len(buckets) - 1, (op.completion.time_ms - result.start_ms) // THROUGHPUT_BUCKET_MS)] += 1
    per_second = [count * 1000 / THROUGHPUT_BUCKET_MS for count in buckets]
    axes.step([index * THROUGHPUT_BUCKET_MS / 1000 for index in range(len(buckets))], per_second, where="post")
    axes.set_ylabel("certified ops / s")
    axes.set_title(f"throughput ({THROUGHPUT_BUCKET_MS} ms buckets)")


def _plot_timeline(axes, result: RunResult) -> None:
    end_s = (result.end_ms - result.start_ms) / 1000
    started = [event for event in result.faults if event.applied_start_ms is not None]
    for row, event in enumerate(started):
        stop = end_s if event.applied_end_ms is None else event.applied_end_ms / 1000
        axes.broken_barh([(event.applied_start_ms / 1000, max(stop - event.applied_start_ms / 1000, 0.01))],
                         (row - 0.4, 0.8), color=FAULT_COLORS[_fault_family(event.kind)], alpha=0.6)
    axes.set_yticks(range(len(started)), [f"{e.coverage_name} {list(e.targets)[:4]}" for e in started],
                    fontsize="x-small")
    axes.set_title("fault timeline")


# ----------------------------------------------------------------- files


def results_json(result: RunResult) -> dict[str, Any]:
    plain = result.to_json()
    plain["vote_statistics"] = vote_statistics(result.history, result.settings.replica_count)
    return plain


def write_report(result: RunResult, directory: Path) -> Path:
    """Write the three files into ``directory`` (created if needed); return the HTML path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "history.jsonl").write_text(result.history.to_jsonl())
    plain = results_json(result)
    (directory / "results.json").write_text(json.dumps(plain, indent=2, sort_keys=True))
    page = directory / "report.html"
    page.write_text(render_html(result, plain, plot_png(result)))
    return page


def _table(headers: list[str], rows: list[list[Any]], highlight: list[bool] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        style = ' class="flag"' if highlight and highlight[index] else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(result: RunResult, plain: dict[str, Any], png: bytes) -> str:
    checks = _table(["check", "result", "summary", "details"],
                    [[name, check["validity"], check["summary"], "; ".join(check["details"])]
                     for name, check in plain["checks"].items()])
    liveness = plain["liveness"]
    live_rows = [["status", liveness["status"]], ["finalized", f"{liveness['finalized']} of {liveness['submitted']}"],
                 ["bound", f"{liveness['bound_ms']} ms"], ["stalled", ", ".join(liveness["stalled"])],
                 ["diagnosis", "; ".join(liveness["diagnosis"])], ["notes", "; ".join(liveness["notes"])]]
    faults = _table(["fault", "targets", "detail", "start (ms)", "end (ms)"],
                    [[e["coverage_name"], e["targets"], e["detail"], e["start_ms"],
                      "end of run" if e["end_ms"] is None else e["end_ms"]] for e in plain["faults"]])
    votes = plain["vote_statistics"]
    vote_table = _table(["replica", "allow", "deny", "approval rate", "flag"],
                        [[v["replica"], v["allow"], v["deny"], v["approval_rate"], v["flag_reason"]] for v in votes],
                        [v["flagged"] for v in votes])
    settings = plain["settings"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>harness run {settings['seed']}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}} tr.flag{{background:#fdd}}
.valid{{color:green}} .invalid{{color:#b00}} .unknown{{color:#a60}}</style></head><body>
<h1>Run seed {settings['seed']}: <span class="{plain['validity']}">{plain['validity']}</span>,
liveness {html.escape(liveness['status'])}</h1>
<p>Reproduce with <code>{html.escape(plain['reproduce'])}</code>.
{settings['replica_count']} replicas, {plain['operations']} operations, fault kinds:
{html.escape(', '.join(settings['fault_kinds']) or 'none')}. Byzantine replicas: {plain['byzantine_replicas']}.</p>
<h2>Safety checks</h2>{checks}
<h2>Liveness</h2>{_table(["", ""], live_rows)}
<h2>Latency, throughput and faults</h2>
<img alt="latency, throughput and fault timeline" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Faults</h2>{faults}
<h2>Votes per replica (from certificates)</h2>
<p>Flagged: approval rate at least {FLAG_MARGIN:.0%} above the median of the other replicas
(with at least {FLAG_MIN_VOTES} votes each).</p>{vote_table}
</body></html>
"""
