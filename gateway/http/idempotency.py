"""HTTP `Idempotency-Key` (as Stripe and payment APIs take it) on both dialects: the same key from the same
caller is the same Iris request, so a retry gets the first call's answer instead of running again.

The key becomes the request's `Nats-Msg-Id` through a hash of the caller (its API key's hash; keyless
callers share one namespace) and the key, so any printable key fits a subject token and two callers that
pick the same key never meet: the Ollama and OpenAI routes of one caller map one key to one request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from gateway.identity import Identity
from schemas.errors import InvalidRequest

HEADER = "idempotency-key"
MAX_KEY_CHARS = 255
_PREFIX = "idem-"


def idempotency_key(headers: Mapping[str, str], identity: Identity) -> str | None:
    """The request id for this call's `Idempotency-Key`; None without one (a fresh id is drawn)."""
    key = headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " < c <= "~" for c in key):
        raise InvalidRequest(
            f"header Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters without spaces"
        )
    digest = hashlib.sha256(f"{identity.limit_key}\x00{key}".encode()).hexdigest()
    return _PREFIX + digest[:40]
