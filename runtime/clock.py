"""The one wall clock every Iris process stamps messages with, and the default name of a process."""

from __future__ import annotations

import functools
import os
import secrets
import socket
import time


def now_ms() -> int:
    """Unix time in ms: deadlines, heartbeats and records on the wire are all in these units."""
    return time.time_ns() // 1_000_000


@functools.cache
def node_id() -> str:
    """`<host>-<pid>-<4 random hex>` as one subject token: the default broker and worker id. The random
    part tells incarnations apart where host and pid repeat (a restarted container is PID 1 again);
    one id per process."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}".replace(".", "-")
