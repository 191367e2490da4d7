"""What every HTTP request must pass before any route reads it: the gateway as a hostile browser meets it.

A keyless gateway on loopback trusts its machine, so a web page must not be able to use it (Ollama's
CVE-2024-28224 class): the `Host` must be a loopback name or address, the machine's own name, or configured
(`allowed_hosts`), which defeats DNS rebinding; a browser's `Origin` must be configured (`allowed_origins`,
default none), and allowed origins get CORS answers; a POST must say it carries JSON (`curl -d`'s form type
is accepted only from a caller that is not a browser), so no page can send a "simple" cross-site request.
The API key is checked before the body is read, so an unauthenticated caller costs no body reading or
parsing. A body may not exceed what fits in one NATS message (`max_payload` less room for the envelope's
headers): over it is `payload_too_large` naming the limit, before a byte is read when `Content-Length`
says so, so no client can make the gateway's connection exceed the server's limit.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.io import ApiFamily, error_response
from gateway.identity import KeyRing
from gateway.metrics import GatewayMetrics
from runtime.clock import now_ms
from schemas.errors import Forbidden, IrisError, PayloadTooLarge, UnsupportedMediaType

ENVELOPE_HEADER_ROOM_BYTES = 4096  # Iris-* and Nats-* headers of the request envelope, with slack
_LOCAL_SUFFIXES = (".localhost",)
_BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-mode")
_FORM_TYPE = "application/x-www-form-urlencoded"  # what `curl -d` sends


def body_limit_bytes(configured_max_bytes: int, max_payload: int) -> int:
    """The largest request body the gateway accepts: its config, or one NATS message less header room."""
    return max(1, min(configured_max_bytes, max_payload - ENVELOPE_HEADER_ROOM_BYTES))


def host_name(host_header: str) -> str:
    """The name in a `Host` header, without port or IPv6 brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_local_host(name: str) -> bool:
    """A name DNS rebinding cannot forge: an IP literal of this machine or its networks, `localhost`,
    `*.localhost`, or this machine's own host name."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name in ("", "localhost", socket.gethostname().lower()) or name.endswith(_LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_unspecified or address.is_link_local


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class HttpGuard:
    """ASGI middleware in front of every route; refusals are the dialect's typed error responses."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        metrics: GatewayMetrics,
        max_body_bytes: int,
        check_hosts: bool,
        allowed_hosts: Collection[str] = (),
        allowed_origins: Collection[str] = (),
    ) -> None:
        self.app, self.keys, self.metrics = app, keys, metrics
        self.max_body_bytes = max_body_bytes
        self.check_hosts = check_hosts
        self.allowed_hosts = {host.lower() for host in allowed_hosts}
        self.allowed_origins = set(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        body = _BodyState(headers)
        try:
            self.check(scope["method"], headers)
        except IrisError as exc:
            family = ApiFamily.OPENAI if scope["path"].startswith("/v1/") else ApiFamily.OLLAMA
            self.metrics.requests.labels(family.value, "(refused)", str(exc.http_status), exc.code.value).inc()
            self.metrics.refusals.note(
                now_ms(), family.value, "(refused)", exc.http_status, exc.code.value, exc.message
            )
            await error_response(family, exc)(scope, receive, body.closing(send))
            return
        await self.app(scope, self._bounded(receive, body), body.closing(send))

    def check(self, method: str, headers: Headers) -> None:
        """Raise the typed error for the first thing wrong with a request's method and headers."""
        self._check_host(headers.get("host", ""))
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins and "*" not in self.allowed_origins:
            raise Forbidden(f"browser origin {origin[:100]!r} is not in the gateway's allowed_origins")
        if method != "POST":
            return
        self._check_content_type(headers)
        self.keys.key_for(headers.get("authorization"))  # before a byte of the body is read
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise self._too_large()

    def _check_host(self, host_header: str) -> None:
        if not self.check_hosts and not self.allowed_hosts:
            return  # bound beyond loopback with no list: keys are required there, rebinding gains nothing
        name = host_name(host_header)
        if "*" in self.allowed_hosts or name in self.allowed_hosts or is_local_host(name):
            return
        raise Forbidden(f"host {host_header[:100]!r} is not a loopback name nor in the gateway's allowed_hosts")

    def _check_content_type(self, headers: Headers) -> None:
        content_type = headers.get("content-type", "")
        if is_json_type(content_type):
            return
        media = content_type.split(";", 1)[0].strip().lower()
        browser = any(name in headers for name in _BROWSER_HEADERS)
        if not browser and media in ("", _FORM_TYPE):
            return  # `curl -d '{...}'`: no browser can send this without an Origin
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type[:100]!r}")

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body is larger than {self.max_body_bytes} bytes (the NATS max_payload less envelope headers)"
        )

    def _bounded(self, receive: Receive, body: _BodyState) -> Receive:
        """`receive` that refuses a body (chunked, or longer than declared) past the limit as it arrives."""

        async def bounded() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.seen_bytes += len(message.get("body", b""))
                body.complete = not message.get("more_body", False)
                if body.seen_bytes > self.max_body_bytes:
                    raise self._too_large()
            return message

        return bounded


class _BodyState:
    """How much of a request's body was read. An answer sent before the whole body was read (a refusal)
    closes the connection: the client is still sending, and reading the rest of it would be the very cost
    the early answer saves (uvicorn would otherwise wait on it, and the client on its answer)."""

    def __init__(self, headers: Headers) -> None:
        length = headers.get("content-length")
        self.complete = "transfer-encoding" not in headers and (length is None or length == "0")
        self.seen_bytes = 0

    def closing(self, send: Send) -> Send:
        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not self.complete:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return send_closing
