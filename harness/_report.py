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
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from ._history import EventType, History
from ._nemesis import FaultEvent
from ._swarm import RunResult

if TYPE_CHECKING:
    from ._mission_results import MissionResult


class Timeline(Protocol):
    """What the plots read: a swarm ``RunResult`` or a mission ``EpisodeResult``."""

    history: History
    faults: list[FaultEvent]
    start_ms: int
    end_ms: int
    liveness_start_ms: int

FLAG_DENY_FRACTION = 0.25  # A flagged replica denies at most this fraction as often as its peers' median.
FLAG_MIN_VOTES = 5
# How much of what most other voters deny a replica must approve to be flagged.
FLAG_CONTESTED_RATE = 0.9
FLAG_RULE = (f"Flagged: a replica that denies at most {FLAG_DENY_FRACTION:.0%} as often as the median of the "
             f"other replicas and approves at least {FLAG_CONTESTED_RATE:.0%} of the requests most other voters "
             f"denied (at least {FLAG_MIN_VOTES} votes and {FLAG_MIN_VOTES} such requests).")
THROUGHPUT_BUCKET_MS = 250
FAULT_COLORS = {"partition": "tab:orange", "network": "tab:blue", "crash": "tab:red", "byzantine": "tab:purple"}


# ----------------------------------------------------------------- vote statistics


def vote_statistics(histories: History | Iterable[History], replica_count: int) -> list[dict[str, Any]]:
    """Per replica: its ALLOW and DENY votes over each certified key once, how often it approved what most
    of the other voters denied ("contested" requests), and how often it voted against the final verdict.

    A replica is flagged when it approves far more than its peers *and* keeps
    approving what the others deny: a content-blind policy that denies bursts
    (``rate``) approves a lot too, but not almost everything the rest refuses.
    """
    counts = {replica_id: {"allow": 0, "deny": 0, "contested": 0, "contested_allow": 0, "against_verdict": 0}
              for replica_id in range(replica_count)}
    for history in [histories] if isinstance(histories, History) else histories:
        seen = set()
        for event in history:
            if event.type is not EventType.OK or event.key in seen:
                continue  # A retry carries the same certificate again; count each key's votes once.
            seen.add(event.key)
            _count_votes(counts, event.votes, event.verdict)
    rows = []
    for replica_id, count in sorted(counts.items()):
        votes = count["allow"] + count["deny"]
        rows.append({"replica": replica_id, **count, "votes": votes,
                     "approval_rate": round(count["allow"] / votes, 3) if votes else None,
                     "contested_approval_rate": round(count["contested_allow"] / count["contested"], 3)
                     if count["contested"] else None})
    for row in rows:
        row["flagged"], row["flag_reason"] = _flag(row, rows)
    return rows


def _count_votes(counts: dict[int, dict[str, int]], votes: tuple[tuple[int, str], ...], verdict: str | None) -> None:
    for replica_id, decision in votes:
        if replica_id not in counts:
            continue
        row = counts[replica_id]
        row["allow" if decision == "ALLOW" else "deny"] += 1
        row["against_verdict"] += decision != verdict
        others = [other for other_id, other in votes if other_id != replica_id]
        if others and 2 * sum(other == "DENY" for other in others) > len(others):
            row["contested"] += 1
            row["contested_allow"] += decision == "ALLOW"


def _flag(row: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[bool, str]:
    """Flag a replica that denies far less often than its peers and approves what most of them deny."""
    peers = [1 - other["approval_rate"] for other in rows
             if other is not row and other["approval_rate"] is not None and other["votes"] >= FLAG_MIN_VOTES]
    if row["votes"] < FLAG_MIN_VOTES or not peers or row["contested"] < FLAG_MIN_VOTES:
        return False, ""
    peer_deny_rate = statistics.median(peers)
    deny_rate = 1 - row["approval_rate"]
    if (peer_deny_rate > 0 and deny_rate <= FLAG_DENY_FRACTION * peer_deny_rate
            and row["contested_approval_rate"] >= FLAG_CONTESTED_RATE):
        return True, (f"approves {row['approval_rate']:.0%} of requests (denies {deny_rate:.0%}, peers' median "
                      f"{peer_deny_rate:.0%}) and {row['contested_approval_rate']:.0%} of the {row['contested']} "
                      "requests most others denied")
    return False, ""


# ----------------------------------------------------------------- plots


def _fault_family(kind: str) -> str:
    return kind.split("-")[0]


def _shade_faults(axes, result: Timeline) -> None:
    end_s = (result.end_ms - result.start_ms) / 1000
    for event in result.faults:
        if event.applied_start_ms is None:
            continue
        stop = end_s if event.applied_end_ms is None else event.applied_end_ms / 1000
        axes.axvspan(event.applied_start_ms / 1000, stop, color=FAULT_COLORS[_fault_family(event.kind)], alpha=0.12)
    axes.axvline((result.liveness_start_ms - result.start_ms) / 1000, color="black", linestyle="--", linewidth=1)


def plot_png(result: Timeline) -> bytes:
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
    timeline.set_xlabel("simulated time since start (s); dashed line: faults healed, liveness phase begins")
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


def _plot_throughput(axes, operations, result: Timeline) -> None:
    buckets = [0] * (1 + (result.end_ms - result.start_ms) // THROUGHPUT_BUCKET_MS)
    for op in operations:
        if op.outcome is EventType.OK:
            buckets[min(len(buckets) - 1, (op.completion.time_ms - result.start_ms) // THROUGHPUT_BUCKET_MS)] += 1
    per_second = [count * 1000 / THROUGHPUT_BUCKET_MS for count in buckets]
    axes.step([index * THROUGHPUT_BUCKET_MS / 1000 for index in range(len(buckets))], per_second, where="post")
    axes.set_ylabel("certified ops / s")
    axes.set_title(f"throughput ({THROUGHPUT_BUCKET_MS} ms buckets)")


def _plot_timeline(axes, result: Timeline) -> None:
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
    vote_table = _vote_table(votes)
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
<p>{FLAG_RULE}</p>{vote_table}
</body></html>
"""


VOTE_HEADERS = ["replica", "allow", "deny", "approval rate", "contested (most others denied)", "approved of those",
                "votes against the verdict", "flag"]


def _vote_table(votes: list[dict[str, Any]], names: list[str] | None = None) -> str:
    rows = [[f"{v['replica']} {names[v['replica']]}" if names else v["replica"], v["allow"], v["deny"],
             v["approval_rate"], v["contested"], v["contested_allow"], v["against_verdict"], v["flag_reason"]]
            for v in votes]
    return _table(VOTE_HEADERS, rows, [v["flagged"] for v in votes])


# ----------------------------------------------------------------- the mission scenario


def write_mission_report(result: "MissionResult", directory: Path) -> Path:
    """results.json, one history per episode and report.html in ``directory``; returns the HTML path."""
    directory.mkdir(parents=True, exist_ok=True)
    plain = result.to_json()
    (directory / "results.json").write_text(json.dumps(plain, indent=2, sort_keys=True))
    sections = []
    for configuration, plain_configuration in zip(result.configurations, plain["configurations"]):
        episodes = []
        for episode, plain_episode in zip(configuration.episodes, plain_configuration["episodes"]):
            name = f"n{configuration.replica_count}-{episode.spec.name}.history.jsonl"
            (directory / name).write_text(episode.history.to_jsonl())
            episodes.append(_episode_html(plain_episode, plot_png(episode), name))
        sections.append(_configuration_html(plain_configuration, episodes))
    page = directory / "report.html"
    page.write_text(_mission_html(plain, sections))
    return page


def _checks_table(checks: dict[str, Any]) -> str:
    return _table(["check", "result", "summary", "details"],
                  [[name, check["validity"], check["summary"], "; ".join(check["details"])]
                   for name, check in checks.items()], [check["validity"] != "valid" for check in checks.values()])


def _latency_rows(latency: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for regime, by_risk in latency.items():
        for risk, summary in by_risk.items():
            if summary.get("count"):
                rows.append([regime, risk, summary["count"], summary["unanswered"], summary["p50_ms"],
                             summary["p99_ms"], summary["max_ms"]])
    return rows


LATENCY_HEADERS = ["regime", "risk", "requests", "unanswered (counted at deadline)", "p50 ms", "p99 ms", "max ms"]


def _episode_html(episode: dict[str, Any], png: bytes, history_name: str) -> str:
    faults = _table(["fault", "targets", "detail", "start (ms)", "end (ms)"],
                    [[e["coverage_name"], e["targets"], e["detail"], e["start_ms"],
                      "end of run" if e["end_ms"] is None else e["end_ms"]] for e in episode["fault_events"]])
    recovered = "" if episode["recovered_ms"] is None else \
        f" A quorum installed the new view {episode['recovered_ms'] - episode['window_start_ms']} ms after the fault."
    cpu = episode.get("host_cpu")
    host = "" if cpu is None else (f" From the faults to the end the host's CPUs were {cpu['mean_busy']:.0%} busy, "
                                   f"and at least {cpu['saturated_fraction']:.0%} busy in {cpu['saturated_share']:.0%} "
                                   f"of its {cpu['interval_s'] * 1000:.0f} ms intervals.")
    verdict = f'<span class="{episode["validity"]}">{episode["validity"]}</span>'
    return f"""<h3>Episode {html.escape(episode['name'])}: {verdict}</h3>
<p>{html.escape(episode['summary'])}: {html.escape(episode['faults'])}. <b>{html.escape(episode['reach'])}</b>:
{html.escape(episode['explanation'])}.{recovered}{host} History: <code>{html.escape(history_name)}</code>.</p>
{_checks_table(episode['checks'])}{_table(LATENCY_HEADERS, _latency_rows(episode['latency']))}
<img alt="latency, throughput and fault timeline" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h4>Fault timeline (ms since the episode started)</h4>{faults}"""


def _configuration_html(configuration: dict[str, Any], episodes: list[str]) -> str:
    n = configuration["replicas"]
    return f"""<h2>n = {n} (f = {configuration['faulty_max']}, quorum {configuration['quorum']}):
<span class="{configuration['validity']}">{configuration['validity']}</span></h2>
<p>Replica {configuration['compromised_replica']} approves everything. Policies:
{html.escape(', '.join(f'{i} {name}' for i, name in enumerate(configuration['policies'])))}.</p>
{_checks_table(configuration['checks'])}
<h3>Votes per replica (from certificates, over every episode)</h3><p>{FLAG_RULE}</p>
{_vote_table(configuration['vote_statistics'], configuration['policies'])}
<h3>Latency over every episode</h3>{_table(LATENCY_HEADERS, _latency_rows(configuration['latency']))}
{''.join(episodes)}"""


def _mission_html(plain: dict[str, Any], sections: list[str]) -> str:
    matrix = _table(["n", "down", "slow", "quorum", "what remains", "no verdict faster than (ms)",
                     "LOW < 200 ms possible", "HIGH < 1000 ms possible"],
                    [[row["replicas"], row["down"], row["slow"], row["quorum"], row["reach"],
                      row["latency_floor_ms"], row["low_bound_achievable"], row["high_bound_achievable"]]
                     for row in plain["feasibility"]])
    comparison = "".join(f"<li>{html.escape(line)}</li>" for line in plain["comparison"])
    bounds = ", ".join(f"{risk} p99 &lt; {bound} ms" for risk, bound in plain["latency_bounds_ms"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>mission seed {plain['seed']}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}} tr.flag{{background:#fdd}}
.valid{{color:green}} .invalid{{color:#b00}} .unknown{{color:#a60}}</style></head><body>
<h1>Mission scenario, seed {plain['seed']}: <span class="{plain['validity']}">{plain['validity']}</span></h1>
<p>Reproduce with <code>{html.escape(plain['reproduce'])}</code>. Latency bounds: {bounds}, over every request made
while a fast quorum existed. Client deadlines (ms): {html.escape(str(plain['deadlines_ms']))}. Slow links add
{plain['slow_link_ms']} ms each way. The agents offer {plain['rate_per_s']:g} requests a second together (gaps of
{plain['arrival_gap_ms'][0]}-{plain['arrival_gap_ms'][1]} ms).</p>
<h2>What the cluster can and cannot promise</h2>
<p>A verdict needs a quorum q = ceil((n+f+1)/2) of replicas, so that any two verdict quorums share a correct
replica. Fewer than q replicas up: nothing can be certified and clients must be refused. At least q up, but fewer
than q up and on fast links: every quorum holds a replica behind slow links, which must receive the request and
then answer, so no correct protocol certifies a verdict faster than two slow delays.</p>{matrix}
<h2>The same faults at n = 5 and n = 7</h2><ul>{comparison}</ul>
{''.join(sections)}
</body></html>
"""
