"""Golden interaction scripts: replaying each tests/interactions/*.txt reproduces its recorded output exactly.

Any change in what the sans-IO replicas send, persist, finalize or reject shows
up as a unified diff of a script.  Rewrite the expected output after an
intended change with ``pytest tests/test_interactions.py --rewrite`` (or
``BFT_REWRITE_GOLDEN=1``), then review the diff like code.
"""

from __future__ import annotations

import difflib
import re
import os
from pathlib import Path

import pytest

from bft.testing import ScriptError, replay_interactions
from bft.testing._interactions import Interactions

SCRIPTS_DIR = Path(__file__).parent / "interactions"
SCRIPTS = sorted(SCRIPTS_DIR.glob("*.txt"))


def rewrite_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--rewrite")) or os.environ.get("BFT_REWRITE_GOLDEN") == "1"


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 16, f"expected the golden scripts in {SCRIPTS_DIR}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.stem for script in SCRIPTS])
def test_every_script_starts_by_saying_what_it_shows(script: Path) -> None:
    first_line = script.read_text().split("\n", 1)[0]
    assert first_line.startswith("# ") and len(first_line) > 20, f"{script.name} must open with a comment"


def test_the_readme_documents_every_command_and_the_spec_links_every_script() -> None:
    readme = (SCRIPTS_DIR / "README.md").read_text()
    spec = (SCRIPTS_DIR.parent.parent / "specs" / "SPEC.md").read_text()
    assert [name for name in Interactions().commands if f"`{name}" not in readme] == []
    assert [script.name for script in SCRIPTS if f"tests/interactions/{script.name}" not in spec] == []


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


def test_comments_and_commands_are_kept_and_only_outputs_are_recomputed() -> None:
    script = "# a comment\ncluster n=4\n----\nstale output\n\n# another\nheal\n----\n"
    replayed = replay_interactions(script)
    assert replayed.startswith("# a comment\ncluster n=4\n----\nn=4 f=1 quorum=3")
    assert "stale output" not in replayed
    assert replayed.endswith("\n# another\nheal\n----\nhealed\n")


@pytest.mark.parametrize("script, problem", [
    ("cluster n=4\nstatus\n----\n", "must be followed by a line '----'"),
    ("status\n----\n", "the first command must be cluster"),
    ("cluster n=4\n----\n\nfly\n----\n", "unknown command 'fly'"),
    ("cluster n=4\n----\n\nstatus colour=red\n----\n", "unknown options: colour"),
    ("cluster n=4\n----\n\ncrash r=7\n----\n", "'7' is not a replica of a cluster of 4"),
    ("cluster n=4\n----\n\nrestart r=1\n----\n", "r1 is not crashed"),
    ("cluster n=4\n----\n\npolicy r=1 maybe\n----\n", "policy r=IDS allow|deny|manual"),
])
def test_a_malformed_script_fails_with_its_line_and_reason(script: str, problem: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(problem)):
        replay_interactions(script)


def test_a_configuration_the_core_refuses_is_printed_not_raised() -> None:
    replayed = replay_interactions("cluster n=4 log_window=4 checkpoint_interval=4\n----\n")
    assert "error: log_window must be at least twice checkpoint_interval" in replayed
