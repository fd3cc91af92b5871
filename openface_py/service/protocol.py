"""uvicorn's HTTP/1.1 protocol with a deadline for a request's headers.

uvicorn (0.55, h11) waits for the rest of a request's headers for as long as a client likes: a
connection that sends ``GET / HTTP/1.1\\r\\nX-a: b`` and then one byte now and then is held open
for good, and enough of them use up the server's sockets (the "slowloris" attack). Here every
request's headers must be complete within ``header_timeout_s`` of the connection opening or of
the previous response; otherwise the connection is answered 408 and closed. (Bodies have their
own deadline in ``service.app.read_body``.)
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

#: how long a request's headers may take when nothing else says (``serve --header-timeout-s``)
DEFAULT_HEADER_TIMEOUT_S = 20.0


def header_timeout_of(config) -> float:
    """The deadline for ``config``: its ``header_timeout_s`` (set by ``serve``), else the one in
    the settings that ``serve --workers N`` hands its processes, else the default."""
    value = getattr(config, "header_timeout_s", None)
    if value is None:
        raw = os.environ.get("OPENFACE_PY_SERVE")
        value = json.loads(raw).get("header_timeout_s") if raw else None
    return float(value or DEFAULT_HEADER_TIMEOUT_S)


class HeaderDeadlineProtocol(H11Protocol):
    """``H11Protocol`` whose connections must send each request's headers in time."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timeout_s = header_timeout_of(self.config)
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being served: its headers arrived
        body = b'{"detail":"request headers not received in time"}'
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)
