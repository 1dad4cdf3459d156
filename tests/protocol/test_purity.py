"""The protocol package stays pure and its public surface stays explicit."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import tidesync.protocol as protocol

PACKAGE = Path(protocol.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")

#: Everything a protocol module may import from outside tidesync.
ALLOWED = {"__future__", "collections", "dataclasses", "enum", "math", "typing", "zlib", "msgpack"}
#: Calls that would read the clock or randomness.
FORBIDDEN_CALLS = {"time", "monotonic", "perf_counter", "now", "utcnow", "today", "random",
                   "randint", "randrange", "token_bytes", "urandom", "uuid4"}


@pytest.mark.parametrize("module", MODULES)
def test_imports_only_the_standard_pure_set_msgpack_and_tidesync(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside tidesync
                assert node.level == 1 or node.module in ("errors", "core.stamp", "core.transaction",
                                                          "core.values"), node.module
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in ALLOWED, f"{module} imports {name}"


@pytest.mark.parametrize("module", MODULES)
def test_no_clock_or_randomness(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert name not in FORBIDDEN_CALLS, f"{module} calls {name}()"


def test_package_all_is_the_union_of_the_modules() -> None:
    exported: set[str] = {"Role", "State"}
    for module in ("actions", "codec", "codes", "events", "link", "messages", "replica", "replicator"):
        exported |= set(importlib.import_module(f"tidesync.protocol.{module}").__all__)
    assert set(protocol.__all__) == exported
    assert len(protocol.__all__) == len(set(protocol.__all__))
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
