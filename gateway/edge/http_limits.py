"""HTTP limits uvicorn does not enforce: how long and how big a request head may be.

uvicorn closes idle keep-alive connections and the gateway bounds body reads
(``server.body_timeout_s``), but a client that sends its request line and
headers a byte at a time, or nothing at all, held a connection forever; and
uvicorn's default parser (httptools) took headers of any size (8 MB passed
through to the app). So:

- :func:`protocol_class`: uvicorn's httptools protocol with a deadline from a
  connection's start, or a request's first byte, to the end of its headers
  (``server.header_timeout_s``); past it the client gets 408 and is closed.
- :class:`HeaderLimitMiddleware`: request line and headers beyond
  ``server.max_header_bytes`` in total get 431 before anything else
  (authentication included) looks at them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.openai import errors

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _raw_response(status: int, reason: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


def protocol_class(head_timeout_s: float) -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` protocol with a request-head deadline; "auto" without httptools
    (uvicorn's h11 fallback bounds head size itself: ``h11_max_incomplete_event_size``)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    timeout_body = errors.openai_error_body(
        408, f"the request line and headers did not arrive within {head_timeout_s:g}s "
             "(server.header_timeout_s)")

    class HeadTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends anything is held too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _timed_out(self) -> None:
            self._head_timer = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if busy or self.transport.is_closing():
                return  # a response is under way: the pipelined head can wait for it
            self.transport.write(_raw_response(408, "Request Timeout", timeout_body))
            self.transport.close()

    return HeadTimeoutProtocol


class HeaderLimitMiddleware:
    """431 for a request whose line and headers exceed ``max_bytes`` in total."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.max_bytes:
                body = errors.openai_error_body(
                    431, f"request headers are {size} bytes; the limit is {self.max_bytes} "
                         "(server.max_header_bytes)")
                await send({"type": "http.response.start", "status": 431,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
