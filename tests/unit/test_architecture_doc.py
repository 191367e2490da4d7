"""docs/architecture.md names only what exists: every subject, header, stream, bucket and message it puts in
backticks is defined in `schemas/`, every file path it names is in the tree, and nothing in the repository
points at files outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import msgspec

from schemas import errors, headers, messages, model_cards, subjects

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
CODE = re.compile(r"`([^`]+)`")


def names_in_doc() -> set[str]:
    prose = re.sub(r"```.*?```", "", DOC.read_text(), flags=re.S)  # the tree block is folders, not names
    return {name for span in CODE.findall(prose) for name in re.split(r"[\s,()→]+", span) if name}


def header_names() -> set[str]:
    return {v for v in vars(headers).values() if isinstance(v, str) and re.fullmatch(r"(Iris|Nats)-[A-Za-z-]+", v)}


def subject_literals() -> set[str]:
    return {v for v in vars(subjects).values() if isinstance(v, str)}


def message_names() -> set[str]:
    modules = (messages, model_cards, errors)
    return {n for m in modules for n, v in vars(m).items() if isinstance(v, type) and issubclass(v, msgspec.Struct)}


def test_headers_named_exist() -> None:
    named = {n for n in names_in_doc() if re.fullmatch(r"(Iris|Nats)-[A-Za-z-]+", n)}
    wildcard = {n for n in named if n.endswith("-")}  # `Iris-Dead-*` stands for the family
    assert named - wildcard <= header_names(), named - wildcard - header_names()
    assert all(any(h.startswith(prefix) for h in header_names()) for prefix in wildcard)


def test_subjects_streams_and_buckets_named_exist() -> None:
    literals = subject_literals()
    named = {n for n in names_in_doc() if re.match(r"(iris\.|\$KV\.|IRIS_)", n)}
    for name in named:
        fixed = re.split(r"[.<\[]", name.replace("$KV.", ""))
        if name.startswith("IRIS_"):
            assert name in literals, name
        elif name.startswith("$KV."):
            assert fixed[0] in literals, name
        else:  # a pattern: its fixed prefix (up to the first <token>) is a defined subject or prefix
            prefix = name.split(".<")[0].split("[")[0].split(".*")[0]
            assert any(lit == prefix or lit.startswith(prefix + ".") or prefix.startswith(lit) for lit in literals), (
                name
            )


def test_messages_named_exist() -> None:
    structs = message_names()
    named = {n for n in names_in_doc() if re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z]+)+", n)}
    code_names = {"RequestQueue", "BrokerService", "Scheduler", "Decisions", "CancelBook"}  # Python, not wire
    assert named - code_names <= structs, named - code_names - structs


def test_paths_named_exist() -> None:
    paths = {n for n in names_in_doc() if re.fullmatch(r"[a-z_]+/[\w/]+(\.py|/)", n)}
    assert paths, "the doc names its modules"
    assert all((ROOT / p).exists() for p in paths), [p for p in paths if not (ROOT / p).exists()]


def test_nothing_refers_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    outside = re.compile(r"\.\./shared|DESIGN\.md")
    files = [ROOT / f for f in tracked.split() if (ROOT / f) != Path(__file__) and (ROOT / f).is_file()]
    assert [f for f in files if outside.search(f.read_text(errors="ignore"))] == []
