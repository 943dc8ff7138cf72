"""Proves ClusterConfig and Limits refuse, with ConfigError, every unsafe or inconsistent setting, and accept the sane ones."""

from __future__ import annotations

import dataclasses

import pytest

from bft.core import ClusterConfig, ConfigError, KeyPair, Limits, Risk, VerdictRule, default_rules
from bft.core._messages import MAX_BATCH_ENTRIES, MAX_REPLICAS


def replica_keys(count: int) -> tuple[bytes, ...]:
    return tuple(KeyPair.from_seed(bytes([index % 256, index // 256]) + bytes(30)).public_key for index in range(count))


CLIENTS = {"alice": KeyPair.from_seed(b"\xaa" * 32).public_key}


def create(count: int = 4, **options) -> ClusterConfig:
    return ClusterConfig.create("config-test", replica_keys(count), CLIENTS, **options)


@pytest.mark.parametrize("count, faulty, quorum", [(1, 0, 1), (3, 0, 2), (4, 1, 3), (5, 1, 4), (7, 2, 5), (10, 3, 7)])
def test_sane_configs_are_accepted(count: int, faulty: int, quorum: int) -> None:
    config = create(count)
    assert (config.replica_count, config.faulty_max, config.quorum, config.reply_quorum) == \
        (count, faulty, quorum, faulty + 1)
    assert config.problem() is None
    assert set(config.rules) == set(Risk)


def test_configs_are_immutable() -> None:
    config = create()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.faulty_max = 0
    with pytest.raises(TypeError):
        config.client_keys["mallory"] = bytes(32)
    with pytest.raises(TypeError):
        config.rules[Risk.LOW] = VerdictRule(0, 99)


def test_the_caller_cannot_mutate_rules_or_clients_afterwards() -> None:
    rules = dict(default_rules(4, 1, 3))
    clients = dict(CLIENTS)
    config = ClusterConfig.create("config-test", replica_keys(4), clients, rules=rules)
    rules[Risk.CRITICAL] = VerdictRule(0, 4)
    clients["mallory"] = bytes(32)
    assert config.rules[Risk.CRITICAL] == VerdictRule(4, 0)
    assert "mallory" not in config.client_keys


@pytest.mark.parametrize("count, faulty", [(3, 1), (4, 2), (6, 2), (9, 3), (1, 1)])
def test_too_few_replicas_for_f_with_explicit_rules(count: int, faulty: int) -> None:
    rules = default_rules(count, 0, count)  # Explicit rules, so only the n >= 3f+1 check can object.
    with pytest.raises(ConfigError, match="3f\\+1"):
        create(count, faulty_max=faulty, rules=rules)


@pytest.mark.parametrize("count, faulty", [(3, 1), (6, 2)])
def test_too_few_replicas_for_f_with_default_rules(count: int, faulty: int) -> None:
    with pytest.raises(ConfigError):
        create(count, faulty_max=faulty)


def test_an_empty_cluster_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        create(0)


def test_negative_f_is_refused() -> None:
    with pytest.raises(ConfigError):
        create(4, faulty_max=-1)


def test_too_many_replicas_is_refused() -> None:
    with pytest.raises(ConfigError):
        create(MAX_REPLICAS + 1)


def test_a_smaller_f_than_possible_is_allowed_and_changes_the_quorum() -> None:
    config = create(7, faulty_max=1)
    assert config.quorum == 5 and config.reply_quorum == 2


def test_duplicate_replica_keys_are_refused() -> None:
    keys = replica_keys(4)
    with pytest.raises(ConfigError, match="distinct"):
        ClusterConfig.create("config-test", keys[:3] + keys[:1], CLIENTS)


@pytest.mark.parametrize("bad_key", [b"", bytes(31), bytes(33)])
def test_malformed_keys_are_refused(bad_key: bytes) -> None:
    with pytest.raises(ConfigError):
        ClusterConfig.create("config-test", replica_keys(3) + (bad_key,), CLIENTS)
    with pytest.raises(ConfigError):
        ClusterConfig.create("config-test", replica_keys(4), {"alice": bad_key})


@pytest.mark.parametrize("risk, rule", [
    (Risk.LOW, VerdictRule(2, 4)),  # Below 2f+1 = 3: one liar and a single honest replica could approve.
    (Risk.CRITICAL, VerdictRule(0, 0)),
    (Risk.MEDIUM, VerdictRule(5, 0)),  # More approvals than replicas: unsatisfiable.
    (Risk.HIGH, VerdictRule(3, -1)),
])
def test_unsafe_rules_are_refused(risk: Risk, rule: VerdictRule) -> None:
    rules = dict(default_rules(4, 1, 3))
    rules[risk] = rule
    with pytest.raises(ConfigError, match=risk.value):
        create(4, rules=rules)


def test_a_missing_rule_is_refused() -> None:
    rules = dict(default_rules(4, 1, 3))
    del rules[Risk.HIGH]
    with pytest.raises(ConfigError, match="every risk"):
        create(4, rules=rules)


@pytest.mark.parametrize("changes", [
    {"max_batch_requests": 0}, {"max_batch_requests": MAX_BATCH_ENTRIES + 1},
    {"log_window": 63, "checkpoint_interval": 32}, {"checkpoint_interval": 0},
    {"max_in_flight_batches": 0}, {"max_in_flight_batches": 200, "log_window": 128},
    {"max_pending_requests": 0}, {"client_window": 0}, {"vote_wait_ticks": -1},
    {"view_change_timeout_ticks": 0}, {"view_change_timeout_ticks": 900, "view_change_timeout_ticks_max": 800},
])
def test_inconsistent_limits_are_refused(changes: dict) -> None:
    limits = Limits(**changes)
    assert limits.problem() is not None
    with pytest.raises(ConfigError):
        create(4, limits=limits)


def test_small_but_consistent_limits_are_accepted() -> None:
    limits = Limits(max_batch_requests=1, max_in_flight_batches=1, log_window=2, checkpoint_interval=1,
                    max_pending_requests=1, client_window=1, vote_wait_ticks=0, view_change_timeout_ticks=1,
                    view_change_timeout_ticks_max=1)
    assert limits.problem() is None
    assert create(4, limits=limits).limits == limits


@pytest.mark.parametrize("changes", [{"max_clock_skew_ms": -1}, {"orphan_vote_ticks": -1},
                                     {"max_message_bytes": 0}, {"max_message_bytes": 2**40}])
def test_every_limit_is_range_checked(changes: dict) -> None:
    assert Limits(**changes).problem() is not None
