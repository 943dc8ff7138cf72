"""A policy named in the cluster file, built-in or by import path with options, is built the way a starting replica builds it; a plug-in that cannot be built stops the start with a one-sentence config error, and one that raises while evaluating only ever votes DENY."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import tomli_w

import bft.policies as policies_module
from bft.cluster import ConfigFileError, create_cluster_directory, load_cluster_file, prepare_launch
from bft.cli import main as bft_main
from bft.core import Decision, Request, Risk, canonical_action
from bft.policies import IncidentMemory
from bft.policy import evaluate_fail_safe
from bft.runtime import NodeOptions

PLUGIN_MODULE = "h9_policy_plugin_fixture"
BROKEN_MODULE = "h9_policy_plugin_broken_fixture"
CRASHING_MODULE = "h9_policy_plugin_crashing_fixture"

PLUGIN_SOURCE = '''
from bft.policy import PolicyDecision


class SpendingLimit:
    """Deny any amount above ``limit``."""

    name = "spending-limit"

    def __init__(self, *, limit, currency="EUR"):
        if not isinstance(limit, int) or limit < 0:
            raise ValueError("limit must be a non-negative integer")
        self.limit = limit
        self.currency = currency

    def evaluate(self, action, context):
        amount = action.get("amount", 0)
        if not isinstance(amount, int) or amount > self.limit:
            return PolicyDecision.deny(f"spending-limit: {amount!r} is over {self.limit} {self.currency}")
        return PolicyDecision.allow("spending-limit: within the limit")


class RaisingPolicy:
    name = "raising"

    def evaluate(self, action, context):
        raise RuntimeError("bug in the plug-in")


class NotAPolicy:
    name = "not-a-policy"


class CrashingConstructor:
    name = "crashing-constructor"

    def __init__(self):
        raise RuntimeError("the plug-in's own bug")
'''


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder on sys.path holding a working plug-in module and one whose import fails."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    (folder / f"{BROKEN_MODULE}.py").write_text("import h9_a_dependency_that_is_not_installed\n")
    (folder / f"{CRASHING_MODULE}.py").write_text("raise RuntimeError('crashes at import')\n")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in (PLUGIN_MODULE, BROKEN_MODULE, CRASHING_MODULE):
        sys.modules.pop(name, None)


@pytest.fixture
def cluster_path(tmp_path) -> Path:
    return create_cluster_directory(tmp_path / "cluster", 4).path


def set_policy(path: Path, replica_id: int, policy: str, options: dict | None = None) -> None:
    """Rewrite one replica's policy in the cluster file, as an operator would edit it."""
    document = tomllib.loads(path.read_text())
    entry = document["replicas"][replica_id]
    entry["policy"] = policy
    entry.pop("policy_options", None)
    if options is not None:
        entry["policy_options"] = options
    path.write_text(tomli_w.dumps(document))


def request(action: dict, number: int = 1) -> Request:
    return Request("client-0", number, Risk.LOW, canonical_action(action), 10_000, bytes(64))


def test_an_import_path_plugin_with_options_is_what_the_replica_runs(plugin_path, cluster_path):
    set_policy(cluster_path, 1, f"{PLUGIN_MODULE}:SpendingLimit", {"limit": 500, "currency": "CHF"})
    spec = load_cluster_file(cluster_path).replica(1).policy
    assert (spec.name, dict(spec.options)) == (f"{PLUGIN_MODULE}:SpendingLimit", {"limit": 500, "currency": "CHF"})
    policy = prepare_launch(cluster_path, 1).policy
    assert (type(policy).__name__, policy.limit, policy.currency) == ("SpendingLimit", 500, "CHF")
    assert evaluate_fail_safe(policy, request({"tool": "pay", "amount": 500}), 1).decision is Decision.ALLOW
    decision = evaluate_fail_safe(policy, request({"tool": "pay", "amount": 501}), 1)
    assert decision.decision is Decision.DENY and "over 500 CHF" in decision.reason


def test_the_incident_memory_policy_takes_its_options_from_the_cluster_file(cluster_path):
    options = {"remember_evaluations": 5, "max_remembered": 8, "per_client": True,
               "incident_patterns": {"secret project": ["\\bproject titan\\b"]}, "command_fields": ["sql"]}
    set_policy(cluster_path, 2, "incident-memory", options)
    policy = prepare_launch(cluster_path, 2).policy
    assert isinstance(policy, IncidentMemory)
    assert (policy.remember_evaluations, policy.max_remembered, policy.per_client) == (5, 8, True)
    decision = evaluate_fail_safe(policy, request({"tool": "mail", "body": "Project Titan"}), 2)
    assert decision.decision is Decision.DENY and "secret project" in decision.reason


def test_bft_init_hands_out_the_incident_memory_policy(tmp_path, capsys):
    directory = tmp_path / "init"
    assert bft_main(["init", str(directory), "--replicas", "4", "--policies", "incident-memory,deny-list"]) == 0
    assert "replica 0: 127.0.0.1" in capsys.readouterr().out
    path = directory / "cluster.toml"
    names = [entry.policy.name for entry in load_cluster_file(path).replicas]
    assert names == ["incident-memory", "deny-list", "incident-memory", "deny-list"]
    assert isinstance(prepare_launch(path, 2).policy, IncidentMemory)


@pytest.mark.parametrize("policy, options, problem", [
    (f"{BROKEN_MODULE}:Anything", None, f"cannot import policy module '{BROKEN_MODULE}'"),
    ("h9_no_such_module_anywhere:Policy", None, "cannot import policy module 'h9_no_such_module_anywhere'"),
    (f"{CRASHING_MODULE}:Anything", None, "RuntimeError: crashes at import"),
    (f"{PLUGIN_MODULE}:CrashingConstructor", None, "RuntimeError: the plug-in's own bug"),
    (f"{PLUGIN_MODULE}:Missing", None, "has no attribute 'Missing'"),
    (f"{PLUGIN_MODULE}:SpendingLimit", None, "bad options"),
    (f"{PLUGIN_MODULE}:SpendingLimit", {"limit": 5, "colour": "red"}, "bad options"),
    (f"{PLUGIN_MODULE}:SpendingLimit", {"limit": -5}, "limit must be a non-negative integer"),
    (f"{PLUGIN_MODULE}:NotAPolicy", None, "has no evaluate method"),
    ("incident-memory", {"remember_evaluations": 0}, "bad options for policy 'incident-memory'"),
    ("incident-memory", {"incident_patterns": {"x": ["(unclosed"]}}, "not a regular expression"),
])
def test_a_plugin_that_cannot_be_built_stops_the_start_with_one_sentence(plugin_path, cluster_path, policy, options,
                                                                          problem):
    set_policy(cluster_path, 0, policy, options)
    load_cluster_file(cluster_path)  # The file itself is well formed; building the policy is what fails.
    with pytest.raises(ConfigFileError) as raised:
        prepare_launch(cluster_path, 0)
    message = str(raised.value)
    assert message.startswith(str(cluster_path)) and "replica 0's policy cannot be built" in message
    assert problem in message and "\n" not in message
    prepare_launch(cluster_path, 1)  # The other replicas are unaffected.


def test_a_malformed_policy_name_is_refused_when_the_file_is_read(cluster_path):
    set_policy(cluster_path, 0, "not a path:Policy")
    with pytest.raises(ConfigFileError, match="neither a built-in name nor a 'package.module:Name' path"):
        load_cluster_file(cluster_path)


def test_a_plugin_that_raises_while_evaluating_votes_deny(plugin_path, cluster_path):
    set_policy(cluster_path, 3, f"{PLUGIN_MODULE}:RaisingPolicy")
    policy = prepare_launch(cluster_path, 3).policy
    decision = evaluate_fail_safe(policy, request({"tool": "read_file", "path": "/workspace/a"}), 3)
    assert decision.decision is Decision.DENY
    assert decision.reason == "policy error: RuntimeError: bug in the plug-in"


def test_the_plugin_guide_names_settings_that_exist():
    guide = " ".join(policies_module.__doc__.split())
    defaults = {item.name: item.default for item in dataclasses.fields(NodeOptions)}
    assert "``[node] policy_deadline_ms`` (default 2000)" in guide and defaults["policy_deadline_ms"] == 2000
    assert "``[node] policy_threads``" in guide and "policy_threads" in defaults
    cluster_file_format = sys.modules[load_cluster_file.__module__].__doc__
    assert "[replicas.policy_options]" in guide and "[replicas.policy_options]" in cluster_file_format
