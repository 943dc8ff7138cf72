"""Step 6: profile one latency run with pyinstrument and say where the time goes.

The profile runs the in-process launcher (the only one whose replicas live in
this interpreter) with durable storage at n = 4, samples the trio thread, and
reduces the call tree to three views: self time by category (crypto, codec,
storage, protocol core, runtime, trio, idle), the functions with the most self
time, and the project functions with the most inclusive time.  Policy
evaluations run in worker threads and are not sampled; step 1 measured them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import trio

from ._latency import LatencySettings, closed_loop_latency
from ._launchers import ClusterSpec, InProcessLauncher

SAMPLE_INTERVAL_S = 0.001
TOP_COUNT = 12
# (category, substrings of a frame's file path or function that put its self time there), first match wins.
CATEGORIES = (
    ("idle (waiting in epoll)", ("_io_epoll.py:get_events", ":epoll.poll")),
    ("crypto (pynacl)", ("/nacl/", ":Lib.crypto_", "hashlib", ":openssl_sha256")),
    ("storage (sqlite3, bft.storage)", ("sqlite3", "/bft/storage/", ":Connection.")),
    ("codec (msgpack, schema)", ("msgpack", "/bft/core/_codec.py", "/bft/core/_schema.py", "/bft/core/_messages.py")),
    ("protocol core (bft.core)", ("/bft/core/", "sortedcontainers", "dataclasses.py")),
    ("runtime (bft.runtime)", ("/bft/runtime/",)),
    ("trio and sockets", ("/trio/", "trio.", "/outcome/", "outcome.", "socket.py", "selectors.py")),
)


def _category(location: str, caller_category: str) -> str:
    """The first category whose marker ``location`` holds; otherwise (built-ins such as ``len``,
    ``contextlib`` helpers) the category of the code that called it."""
    for name, markers in CATEGORIES:
        if any(marker in location for marker in markers):
            return name
    return caller_category


def _location(frame) -> str:
    return f"{frame.file_path or '?'}:{frame.function}"


def _short(frame) -> str:
    path = frame.file_path_short or frame.file_path or "?"
    return f"{frame.function} ({path}:{frame.line_no})"


def summarize_session(root) -> dict:
    """Self time by category and by function, inclusive time of project functions, from a frame tree."""
    self_by_category: dict[str, float] = defaultdict(float)
    self_by_function: dict[str, float] = defaultdict(float)
    inclusive_by_function: dict[str, float] = defaultdict(float)
    stack = [(root, frozenset(), "other")]
    while stack:
        frame, open_functions, caller_category = stack.pop()
        if frame.is_synthetic:
            continue  # A "[self]" leaf: its time is already in its parent's total_self_time.
        name = _short(frame)
        self_time = frame.total_self_time
        category = _category(_location(frame), caller_category)
        self_by_category[category] += self_time
        self_by_function[name] += self_time
        is_project = "/bft/" in (frame.file_path or "") or "/bench/" in (frame.file_path or "")
        if is_project and name not in open_functions:  # Count a recursive function once per stack.
            inclusive_by_function[name] += frame.time
        stack.extend((child, open_functions | {name}, category) for child in frame.children)
    total = root.time
    assert total > 0

    def top(table: dict[str, float]) -> list[dict]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:TOP_COUNT]
        return [{"function": name, "seconds": round(seconds, 4), "fraction": round(seconds / total, 4)}
                for name, seconds in ranked]

    categories = {name: round(seconds / total, 4) for name, seconds in
                  sorted(self_by_category.items(), key=lambda item: -item[1])}
    return {"sampled_s": round(total, 3), "self_time_by_category": categories,
            "top_self_time": top(self_by_function), "top_inclusive_project": top(inclusive_by_function)}


def profile_latency_run(spec: ClusterSpec, settings: LatencySettings, html_path: Path | None) -> dict:
    """Profile a closed-loop latency run; write pyinstrument's HTML report to ``html_path`` if given."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=SAMPLE_INTERVAL_S, async_mode="disabled")
    profiler.start()
    try:
        latency = trio.run(closed_loop_latency, InProcessLauncher(), spec, settings)
    finally:
        session = profiler.stop()
    if html_path is not None:
        html_path.write_text(profiler.output_html())
    summary = summarize_session(session.root_frame())
    latency.pop("latencies_ms")
    return {"launcher": InProcessLauncher.name, "replica_count": spec.replica_count, "storage": spec.storage,
            "requests": settings.requests, "latency": latency["all"], **summary,
            "html": str(html_path) if html_path is not None else None}
