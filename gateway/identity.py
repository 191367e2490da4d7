"""Who is asking, and what they may ask for: API key → user, workload, priority, deadline.

A key (`Authorization: Bearer KEY`) is looked up by its sha256; an unknown or malformed key is always
`unauthorized`, never a silent downgrade to keyless. Without a key, a gateway bound to loopback serves
workload `default` at priority 1 (like Ollama on localhost) unless keys are required. The headers
`X-Iris-Workload`, `X-Iris-Priority` and `X-Iris-Deadline` may narrow what the key allows, never widen it:
asking for more is `forbidden`. A client-supplied end-user name (OpenAI's `user` field) splits the key's
share between its end users (`Iris-End-User`) instead of adding shares: however many names a key sends, it
holds what one user of its workload holds. Keyless callers naming users share the workload's one
anonymous flow the same way.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from gateway.config import ApiKey, GatewayConfig, hash_key
from gateway.rate_limits import RateLimit
from schemas.errors import Forbidden, InvalidRequest, Unauthorized
from schemas.subjects import MAX_TOKEN_CHARS, is_token, to_token

T = TypeVar("T")

WORKLOAD_HEADER = "x-iris-workload"
PRIORITY_HEADER = "x-iris-priority"
DEADLINE_HEADER = "x-iris-deadline"
KEYLESS = ApiKey(sha256="0" * 64, user="anonymous")


@dataclass(frozen=True)
class Identity:
    user: str | None  # fairness key; None = the workload's shared anonymous flow
    workload: str
    priority: int
    deadline_s: float
    limit_key: str = ""  # whose allowance the request spends (the key's hash; "" = keyless callers)
    rate: RateLimit = RateLimit()
    end_user: str | None = None  # who the caller asks for: splits the user's share, never adds one


class KeyRing:
    def __init__(self, config: GatewayConfig) -> None:
        self._keys = {key.sha256: key for key in config.api_keys}
        self.keys_required = config.keys_required
        self.default_deadline_s = config.default_deadline_s
        self.max_deadline_s = config.max_deadline_s
        self.keyless_rate = RateLimit(config.keyless_requests_per_min, config.keyless_tokens_per_min)

    def key_for(self, authorization: str | None) -> ApiKey | None:
        """The key behind an `Authorization` header; None for a keyless request that is allowed."""
        if not authorization:
            if self.keys_required:
                raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`")
            return None
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("the Authorization header must be `Bearer <key>`")
        digest = hash_key(secret)
        key = self._keys.get(digest)
        if key is None or not hmac.compare_digest(key.sha256, digest):
            raise Unauthorized("invalid API key")
        return key

    def identify(self, headers: Mapping[str, str], end_user: str | None = None) -> Identity:
        key = self.key_for(headers.get("authorization"))
        grant = key or KEYLESS
        workload = headers.get(WORKLOAD_HEADER, grant.workload)
        if not is_token(workload):
            raise InvalidRequest(f"header X-Iris-Workload must match [A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}}")
        if not grant.allows_workload(workload):
            raise Forbidden(f"this key may not use workload {workload!r}")
        priority = _priority(headers.get(PRIORITY_HEADER), grant)
        deadline_s = self._deadline_s(headers.get(DEADLINE_HEADER))
        user = None if key is None else key.user
        rate = self.keyless_rate if key is None else RateLimit(key.requests_per_min, key.tokens_per_min)
        limit_key = "" if key is None else key.sha256
        return Identity(user, workload, priority, deadline_s, limit_key, rate, to_token(end_user) if end_user else None)

    def _deadline_s(self, raw: str | None) -> float:
        if raw is None:
            return self.default_deadline_s
        value = _parsed(raw, float, "header X-Iris-Deadline must be seconds from now")
        if not 0 < value <= self.max_deadline_s:
            raise InvalidRequest(f"header X-Iris-Deadline must be in (0, {self.max_deadline_s:g}] s, got {raw[:40]}")
        return value


def _priority(raw: str | None, grant: ApiKey) -> int:
    if raw is None:
        return grant.default_priority
    value = _parsed(raw, int, "header X-Iris-Priority must be an integer")
    if not 1 <= value <= 100:
        raise InvalidRequest(f"header X-Iris-Priority must be in [1, 100], got {value}")
    if value > grant.max_priority:
        raise Forbidden(f"priority {value} is above this key's maximum {grant.max_priority}")
    return value


def _parsed(raw: str, parse: Callable[[str], T], rule: str) -> T:
    """`raw` as a number, or `InvalidRequest` saying the rule and what came (cut short)."""
    try:
        return parse(raw)
    except ValueError:
        raise InvalidRequest(f"{rule}, got {raw[:40]!r}") from None
