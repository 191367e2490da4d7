"""The container images build from a copy of the source: each must copy every package the distribution
ships (pyproject's `packages.find`), or the image installs without it and fails at its first import."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def shipped_packages() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_each_image_copies_every_shipped_package(dockerfile: str) -> None:
    text = (REPO / "deploy" / "docker" / dockerfile).read_text()
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    assert shipped_packages() - copied == set()


def test_every_top_level_package_is_shipped() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == shipped_packages()
