"""Golden interaction scripts: replaying each tests/interactions/*.txt reproduces its recorded output exactly.

Any change in what the sans-IO replicas send, persist, finalize or reject shows
up as a unified diff of a script.  Rewrite the expected output after an
intended change with ``pytest tests/test_interactions.py --rewrite`` (or
``BFT_REWRITE_GOLDEN=1``), then review the diff like code.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from bft.testing import replay_interactions

SCRIPTS_DIR = Path(__file__).parent / "interactions"
SCRIPTS = sorted(SCRIPTS_DIR.glob("*.txt"))


def rewrite_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--rewrite")) or os.environ.get("BFT_REWRITE_GOLDEN") == "1"


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 15, f"expected the golden scripts in {SCRIPTS_DIR}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.stem for script in SCRIPTS])
def test_script_replays_exactly(script: Path, request: pytest.FixtureRequest) -> None:
    recorded = script.read_text()
    replayed = replay_interactions(recorded)
    if rewrite_requested(request.config):
        if replayed != recorded:
            script.write_text(replayed)
        return
    diff = "".join(difflib.unified_diff(recorded.splitlines(keepends=True), replayed.splitlines(keepends=True),
                                        f"{script.name} (recorded)", f"{script.name} (replayed now)"))
    assert not diff, f"{script.name} no longer replays as recorded (rewrite with --rewrite if intended):\n{diff}"


def test_replay_is_deterministic() -> None:
    """Replaying one script twice in one process gives the same text (no hidden clock or global state)."""
    text = SCRIPTS[0].read_text()
    assert replay_interactions(text) == replay_interactions(text)
