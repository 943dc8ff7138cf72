"""Proves the public surface: every name in the __all__ of bft, bft.core and bft.cluster imports, and nothing private or unlisted leaks."""

from __future__ import annotations

import importlib
import types

import pytest

import bft
import bft.cluster
import bft.core

PACKAGES = [bft, bft.core, bft.cluster]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_every_exported_name_exists_and_is_unique(package) -> None:
    names = package.__all__
    assert len(names) == len(set(names)), "duplicate names in __all__"
    assert names, "an empty public surface"
    for name in names:
        assert not name.startswith("_"), name
        assert hasattr(package, name), name
        assert getattr(package, name) is not None, name


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_star_import_gives_exactly_the_public_names(package) -> None:
    namespace: dict = {}
    exec(f"from {package.__name__} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(package.__all__)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_nothing_unlisted_leaks(package) -> None:
    # Apart from subpackages and modules, every public attribute of the package must be listed.
    unlisted = [name for name in dir(package) if not name.startswith("_") and name not in package.__all__
                and not isinstance(getattr(package, name), types.ModuleType)]
    assert unlisted == []
    # Submodules visible on the core package are private (underscore) modules only.
    core_modules = [name for name in dir(bft.core) if isinstance(getattr(bft.core, name), types.ModuleType)]
    assert all(name.startswith("_") for name in core_modules), core_modules


def test_exported_objects_come_from_the_package_itself() -> None:
    for name in bft.core.__all__:
        value = getattr(bft.core, name)
        module = getattr(value, "__module__", None)
        if module is not None and isinstance(value, type | types.FunctionType):
            assert module.startswith("bft.core._"), (name, module)


def test_top_level_names_are_the_same_objects_as_in_their_home_packages() -> None:
    homes_of_names = [importlib.import_module(module) for module in ("bft.core", "bft.policy", "bft.client",
                                                                     "bft.runtime")]
    for name in bft.__all__:
        value = getattr(bft, name)
        homes = [getattr(package, name, None) for package in homes_of_names]
        assert any(value is home for home in homes), name


def test_private_modules_are_not_reachable_as_public_names() -> None:
    assert not any(name.startswith("_") for name in bft.core.__all__)
    for private in ("_replica", "_codec", "_schema", "_execution", "_pending", "_slots"):
        assert private not in bft.core.__all__
        importlib.import_module(f"bft.core.{private}")  # They exist, for tests and tools that opt in.


def test_the_core_api_summary_names_are_exported() -> None:
    # The names every driver and tool relies on (the documented API summary).
    required = {"Replica", "Ready", "apply_ready", "ClientCore", "VerdictCertificate", "ClusterConfig", "Limits",
                "decode", "encode", "quorum_size", "decide", "is_settled", "default_rules", "RemoteProtocolError",
                "LocalProtocolError", "CertificateError", "KeyPair", "Signer", "Verifier", "Decision", "Risk"}
    assert required <= set(bft.core.__all__)
    assert {"ClusterConfig", "Decision", "Risk", "VerdictCertificate", "evaluate_fail_safe", "Policy", "Client",
            "BlockingClient", "Outcome"} <= set(bft.__all__)
