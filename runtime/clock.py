"""The one wall clock every Iris process stamps messages with, and the default name of a process."""

from __future__ import annotations

import os
import socket
import time


def now_ms() -> int:
    """Unix time in ms: deadlines, heartbeats and records on the wire are all in these units."""
    return time.time_ns() // 1_000_000


def node_id() -> str:
    """`<host>-<pid>` as one subject token: the default broker and worker id."""
    return f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")
