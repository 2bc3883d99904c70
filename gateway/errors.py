"""Error bodies in the API's own shape (OpenAI now; Ollama's is ``{"error": msg}``)."""

from __future__ import annotations

import msgspec
from starlette.responses import Response


class BadRequest(Exception):
    """A request refused before anything is routed, loaded or queued; each API writes it
    in its own shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error_body(status: int, message: str, *, type: str | None = None,
                      param: str | None = None, code: str | None = None) -> bytes:
    return msgspec.json.encode({"error": {
        "message": message,
        "type": type or _TYPES.get(status, "invalid_request_error" if status < 500
                                   else "server_error"),
        "param": param, "code": code}})


def openai_error(status: int, message: str, *, type: str | None = None,
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:
    return Response(openai_error_body(status, message, type=type, param=param, code=code),
                    status_code=status, media_type="application/json", headers=headers)


def sse_error_event(message: str, *, type: str = "server_error", code: str | None = None,
                    status: int = 503) -> bytes:
    """An error mid-stream: an SSE ``data:`` event in OpenAI's error shape."""
    body = openai_error_body(status, message, type=type, code=code)
    return b"data: " + body + b"\n\n"
