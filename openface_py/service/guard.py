"""Who may talk to the service: Host allow-list, cross-origin refusal, ambiguous framing.

An ASGI middleware in front of the app, answering before any route runs:

- **Host allow-list** (against DNS rebinding: a web page whose name was re-pointed at 127.0.0.1
  reaches a loopback server from the user's browser, with its own name in ``Host``). By
  default only loopback names pass; ``serve --allowed-host NAME`` adds names (``*`` allows any).
- **Cross-origin browser requests** are refused (403) unless their origin is listed
  (``--cors-origin``): a request that says it comes from another origin (``Origin``) or another
  site (``Sec-Fetch-Site``) never runs, so a web page cannot make a visitor's browser identify,
  enroll or delete through a form post or ``fetch``. Same-origin requests (the service's own
  page) and non-browser clients (no such headers) pass.
- **A request with both ``Content-Length`` and ``Transfer-Encoding``** is refused (400): the two
  disagree on where the body ends, the root of request smuggling (RFC 9112, section 6.3).
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

#: The names a loopback server answers to by default.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_name(value: str) -> str:
    """The host of a ``Host`` header or URL authority, without port or IPv6 brackets, lower-case."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Loopback names, plus the address the server binds when it is a specific one."""
    hosts = list(LOOPBACK_HOSTS)
    bound = host_name(bind_host)
    if bound not in ("0.0.0.0", "::", "") and bound not in hosts:
        hosts.append(bound)
    return hosts


def _origin_of(scope: dict, host: str) -> str:
    return f"{scope.get('scheme', 'http')}://{host}".lower()


class RequestGuard:
    """ASGI middleware: refuses requests by Host, origin and framing before the app sees them."""

    def __init__(self, app, allowed_hosts: Iterable[str], cors_origins: Iterable[str] = ()) -> None:
        self.app = app
        hosts = [h.strip() for h in allowed_hosts if h.strip()]
        self.any_host = "*" in hosts
        self.hosts = {host_name(h) for h in hosts if h != "*"}
        self.origins = {o.strip().rstrip("/").lower() for o in cors_origins if o.strip()}

    def refusal(self, scope: dict) -> Optional[tuple[int, str]]:
        """Why this request is refused (status, reason), or None."""
        headers: dict[str, list[str]] = {}
        for k, v in scope.get("headers", ()):
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        if "content-length" in headers and "transfer-encoding" in headers:
            return 400, "a request may not have both Content-Length and Transfer-Encoding"
        if len(headers.get("host", [])) != 1:
            return 400, "exactly one Host header is required"
        host = headers["host"][0]
        if not self.any_host and host_name(host) not in self.hosts:
            return 400, (
                f"host {host[:64]!r} is not served here; the server answers to {', '.join(sorted(self.hosts))} "
                "(serve --allowed-host NAME adds one)"
            )
        origin = (headers.get("origin") or [""])[0].rstrip("/").lower()
        if origin and origin != "null" and origin in self.origins:
            return None
        if origin and origin != _origin_of(scope, host):
            return 403, f"cross-origin request from {origin[:64]!r} refused (serve --cors-origin allows an origin)"
        if origin == "null":
            return 403, "request from an opaque origin refused"
        site = (headers.get("sec-fetch-site") or [""])[0].lower()
        if site in ("cross-site", "same-site"):
            return 403, "cross-site request refused (serve --cors-origin allows an origin)"
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, reason = refused
        body = json.dumps({"detail": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
