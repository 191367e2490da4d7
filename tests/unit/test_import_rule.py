"""The import rule between the parts, read from the source with `ast` (every import, inside functions and
`TYPE_CHECKING` blocks too): gateway, broker and gpu_worker import `schemas`, `runtime` and themselves, never
each other; `runtime` imports only `schemas`; `schemas` imports nothing else of Iris and does no I/O (no
asyncio, no NATS client: only nats-py's config records). `iris` wires the parts together and may import all."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PARTS = ("schemas", "runtime", "broker", "gateway", "gpu_worker", "iris")
ALLOWED = {
    "schemas": {"schemas"},
    "runtime": {"schemas", "runtime"},
    "broker": {"schemas", "runtime", "broker"},
    "gateway": {"schemas", "runtime", "gateway"},
    "gpu_worker": {"schemas", "runtime", "gpu_worker"},
}
NO_IO_IN_SCHEMAS = ("asyncio", "socket", "threading", "subprocess", "nats")
SCHEMAS_MAY_USE = ("nats.js.api",)  # stream and bucket configs are records, not calls


def imported_modules(source: str, package: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in `source`; a relative import resolved against `package`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                yield node.lineno, f"{base}.{node.module}" if node.module else base
            else:
                yield node.lineno, node.module or ""


def violations(source: str, where: Path) -> list[str]:
    """What `source` (the module at `where`, relative to the repository) imports against the rule."""
    part, found = where.parts[0], []
    for line, module in imported_modules(source, where.parent.parts):
        top = module.split(".")[0]
        if top in PARTS and top not in ALLOWED[part]:
            found.append(f"{where}:{line} imports {module}")
        if part == "schemas" and top in NO_IO_IN_SCHEMAS and not module.startswith(SCHEMAS_MAY_USE):
            found.append(f"{where}:{line} imports {module} (the wire contract does no I/O)")
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_the_rule_allows(part: str) -> None:
    modules = sorted((REPO / part).rglob("*.py"))
    assert modules, f"no modules found under {part}/"
    assert [v for path in modules for v in violations(path.read_text(), path.relative_to(REPO))] == []


@pytest.mark.parametrize(
    ("where", "source", "reported"),
    [
        ("gateway/http/probe.py", "def f() -> None:\n    from broker.config import BrokerConfig\n", "broker.config"),
        ("broker/probe.py", "from gpu_worker.engines import fake\n", "gpu_worker.engines"),
        ("runtime/probe.py", "import gateway.service\n", "gateway.service"),
        ("schemas/probe.py", "from iris import Client\n", "iris"),
        ("schemas/probe.py", "from nats.aio.client import Client\n", "nats.aio.client"),
        ("gpu_worker/engines/probe.py", "import iris.sdk.client\n", "iris.sdk.client"),
    ],
)
def test_the_rule_catches_each_kind_of_bad_import(where: str, source: str, reported: str) -> None:
    """The checker itself can fail: each bad import is reported with its line."""
    (problem,) = violations(source, Path(where))
    assert problem.startswith(f"{where}:") and f"imports {reported}" in problem
