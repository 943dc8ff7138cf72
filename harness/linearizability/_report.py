"""A self-contained HTML page for a check: the history as bars per process, the failure marked.

Each operation is a bar from its call to its return on a shared time axis
(the history's ``time`` values when every event has one, else the position in
the file); an indeterminate operation's bar runs dashed to the end.  For an
illegal history the page shows the failing partition: the longest
linearizable prefix in blue, numbered in its linearization order, the rest of
the conflicting observations in orange (outlined in orange when in the prefix), and the operation that
cannot be placed in red.  The page embeds everything (inline SVG, no scripts), in the style of the
harness's run reports.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from ._checker import Failure, Result
from ._ops import Op

BARS_MAX = 3000  # Beyond this a picture explains nothing; the page says how many were left out.
WIDTH_PX, ROW_PX, LEFT_PX, CHARACTER_PX = 1100, 22, 120, 6.5
COLORS = {"prefix": "#4c78a8", "conflict": "#f58518", "unplaceable": "#d62728", "other": "#bbbbbb"}


def write_report(path: Path, ops: Sequence[Op], result: Result, title: str) -> Path:
    """Write the page for ``result`` over ``ops`` to ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(ops, result, title), encoding="utf-8")
    return path


def render(ops: Sequence[Op], result: Result, title: str) -> str:
    failure = result.failure
    shown = list(failure.operations if failure is not None else ops)
    left_out = max(0, len(shown) - BARS_MAX)
    shown = shown[:BARS_MAX]
    summary = _summary(result, len(ops), left_out)
    tables = _failure_tables(failure) if failure is not None else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:90em}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:90%}} .legend span{{padding:2px 8px;
margin-right:1em;color:white}} svg text{{font-size:11px}}</style></head><body>
<h1>{html.escape(title)}: {html.escape(result.outcome.value.upper())}</h1>
<p>{html.escape(summary)}</p>
<p class="legend">{_legend()}</p>
{_svg(shown, failure)}
{tables}
</body></html>
"""


def _summary(result: Result, count: int, left_out: int) -> str:
    parts = [f"{count} operations, {result.partitions} partition(s), {result.states} states explored."]
    if result.failure is not None:
        parts.append(" ".join(result.failure.describe()[:2]))
    parts += list(result.reasons)
    if left_out:
        parts.append(f"{left_out} later operations are not drawn (at most {BARS_MAX} bars).")
    return " ".join(parts)


def _legend() -> str:
    names = {"prefix": "longest linearizable prefix (outlined: in the conflict)", "conflict": "rest of the conflict",
             "unplaceable": "cannot be placed", "other": "other operations"}
    return "".join(f'<span style="background:{COLORS[kind]}">{html.escape(name)}</span>'
                   for kind, name in names.items())


def _svg(ops: Sequence[Op], failure: Failure | None) -> str:
    if not ops:
        return "<p>(no operations)</p>"
    timed = all(op.call_time is not None and (op.ret is None or op.ret_time is not None) for op in ops)
    start = min(_call_at(op, timed) for op in ops)
    end = max(max(_call_at(op, timed), _ret_at(op, timed) or 0) for op in ops) + 1
    processes = sorted({op.process for op in ops}, key=_process_order)
    row_of = {process: row for row, process in enumerate(processes)}
    scale = (WIDTH_PX - LEFT_PX - 10) / max(end - start, 1)
    order = {op.number: position for position, op in enumerate(failure.longest_prefix)} if failure else {}
    shapes = [f'<text x="4" y="{row * ROW_PX + 15}">process {html.escape(str(process))}</text>'
              for process, row in row_of.items()]
    for op in ops:
        x = LEFT_PX + (_call_at(op, timed) - start) * scale
        returned = _ret_at(op, timed)
        width = max(3.0, ((returned if returned is not None else end) - _call_at(op, timed)) * scale)
        y = row_of[op.process] * ROW_PX + 3
        kind = _kind(op, failure)
        outline = ' stroke="black" stroke-dasharray="4 2"' if op.ret is None else ""
        if kind == "prefix" and any(op.number == kept.number for kept in failure.observed):
            outline = f' stroke="{COLORS["conflict"]}" stroke-width="3"'  # In the prefix and in the conflict.
        label = (f"{order[op.number] + 1}. " if op.number in order else "") + _short(op)
        shapes.append(f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{ROW_PX - 6}" '
                      f'fill="{COLORS[kind]}"{outline}><title>{html.escape(op.describe())}</title></rect>')
        fitting = label[:max(0, int(width / CHARACTER_PX) - 1)]
        if fitting:
            shapes.append(f'<text x="{x + 2:.1f}" y="{y + 12}" fill="white">{html.escape(fitting)}</text>')
    height = len(processes) * ROW_PX + 24
    axis = "file position" if not timed else "time"
    shapes.append(f'<text x="{LEFT_PX}" y="{height - 4}">{axis} {start} to {end} &#8594;</text>')
    return f'<svg width="{WIDTH_PX}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(shapes)}</svg>'


def _process_order(process: object) -> tuple:
    """Numbers in numeric order, then everything else by its text."""
    return (0, process, "") if isinstance(process, (int, float)) else (1, 0, str(process))


def _call_at(op: Op, timed: bool) -> float:
    return op.call_time if timed else op.call


def _ret_at(op: Op, timed: bool) -> float | None:
    if op.ret is None:
        return None
    return op.ret_time if timed else op.ret


def _kind(op: Op, failure: Failure | None) -> str:
    if failure is None:
        return "other"
    if op is failure.unplaceable or op.number == failure.unplaceable.number:
        return "unplaceable"
    if any(op.number == prefix_op.number for prefix_op in failure.longest_prefix):
        return "prefix"
    return "conflict" if any(op.number == kept.number for kept in failure.observed) else "other"


def _short(op: Op) -> str:
    given = "" if op.input is None else f" {op.input!r}"
    result = "?" if op.ret is None else repr(op.output)
    return f"{op.f}{given} {result}"[:40]


def _failure_tables(failure: Failure) -> str:
    prefix = "".join(f"<tr><td>{position + 1}</td><td>{html.escape(failure.mark(op))}</td></tr>"
                     for position, op in enumerate(failure.longest_prefix))
    conflict = "".join(f"<tr><td>{html.escape(op.describe())}</td></tr>" for op in failure.observed)
    minimal = "minimal " if failure.minimal else ""
    relaxed = len(failure.sub_history) - len(failure.observed)
    return f"""<h2>The operation that cannot be placed</h2>
<p><b>{html.escape(failure.unplaceable.describe())}</b>: after the longest linearizable prefix the model is in
state <code>{html.escape(repr(failure.state_after_prefix))}</code>, where its result is impossible, and no other
order gets further.</p>
<h2>The {minimal}conflict: {len(failure.observed)} results that cannot all hold</h2>
<p>Even with the other {relaxed} operations invoked so far set aside (each free to take effect at any point
after its call, or never){'; setting aside any one of these makes the history linearizable' if minimal else ''}.</p>
<table><tr><th>operation</th></tr>{conflict}</table>
<h2>Longest linearizable prefix ({len(failure.longest_prefix)} operations)</h2>
<table><tr><th>#</th><th>operation</th></tr>{prefix}</table>"""
