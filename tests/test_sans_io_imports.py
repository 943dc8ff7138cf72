"""Importing the sans-IO core loads no event loop, sockets, SQLite or metrics library, and the top-level package still hands out every public name on first use."""

from __future__ import annotations

import subprocess
import sys

import bft

IO_PACKAGES = ("trio", "sqlite3", "prometheus_client", "socket")


def modules_loaded_by(statement: str) -> list[str]:
    probe = (f"{statement}; import sys; "
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({IO_PACKAGES!r})))")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return eval(completed.stdout)  # A list of names this test printed itself.


def test_importing_the_core_loads_no_io_library():
    assert modules_loaded_by("import bft.core") == []


def test_importing_the_client_does_load_the_runtime_it_needs():
    assert "trio" in modules_loaded_by("import bft; bft.Client")


def test_every_public_name_resolves_and_an_unknown_one_is_an_attribute_error():
    for name in bft.__all__:
        assert getattr(bft, name) is not None
    try:
        bft.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
