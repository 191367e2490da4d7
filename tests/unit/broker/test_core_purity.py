"""`broker/core` is pure: no module there imports NATS, asyncio, sockets, a clock or a file API, nor any
broker module outside the core, and the wire-contract modules it imports are pure in the same way.
A scheduling bug must be reproducible in a unit test without a server or a real clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CORE = ROOT / "broker" / "core"
# I/O, concurrency and clocks; the clock is passed in (`now_ms`), everything else is the shell's.
FORBIDDEN = {
    "nats", "asyncio", "socket", "os", "pathlib", "io", "shutil", "subprocess", "threading",
    "multiprocessing", "time", "datetime", "select", "selectors", "signal", "ssl", "http", "urllib",
    "structlog", "logging", "prometheus_client", "tempfile", "glob", "sqlite3", "random",
}  # fmt: skip
IO_CALLS = {"open", "print", "input", "exec", "eval", "__import__", "breakpoint"}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names.append(node.module or "")
    return names


def problems(path: Path, allow_broker: bool) -> list[str]:
    found = []
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            found.append(f"{path.name} imports {name}")
        if top == "broker" and not (allow_broker and (name == "broker.core" or name.startswith("broker.core."))):
            found.append(f"{path.name} imports {name}, outside the core")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_CALLS:
            found.append(f"{path.name} calls {node.func.id}()")
    return found


def schemas_imported_by_core() -> set[Path]:
    """The `schemas` modules the core reaches, transitively (they must be pure too)."""
    seen: set[Path] = set()
    todo = [name for path in CORE.glob("*.py") for name in imported_modules(path) if name.startswith("schemas")]
    while todo:
        name = todo.pop()
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        if path in seen or not path.exists():
            continue
        seen.add(path)
        todo += [n for n in imported_modules(path) if n.startswith("schemas")]
    return seen


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    assert problems(path, allow_broker=True) == []


def test_wire_modules_the_core_uses_are_pure() -> None:
    reached = schemas_imported_by_core()
    assert ROOT / "schemas" / "messages.py" in reached  # the walk does find them
    assert [problem for path in sorted(reached) for problem in problems(path, allow_broker=False)] == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rule itself: each kind of impurity is reported."""
    module = tmp_path / "x.py"
    for line, word in [
        ("import asyncio", "asyncio"),
        ("from nats.aio.client import Client", "nats"),
        ("import time", "time"),
        ("from broker.service import BrokerService", "outside the core"),
        ("data = open('f').read()", "open()"),
    ]:
        module.write_text(line + "\n")
        found = problems(module, allow_broker=True)
        assert any(word in p for p in found), (line, found)
