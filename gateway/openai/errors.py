"""Errors and answers in OpenAI's shape: ``{"error": {message, type, param, code}}``,
and SSE for streams. The edge (auth, HTTP limits) answers in this shape too."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from shared import protocol as p

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


class OpenAIFormat:
    stream_content_type = b"text/event-stream; charset=utf-8"

    def loaded(self) -> None:
        pass

    def response(self, body: bytes) -> bytes:
        return body

    def chunk(self, data: str) -> bytes:
        return data.encode()

    def end(self) -> bytes:
        return b""

    def error(self, err: p.Error) -> bytes:
        return openai_error_body(err.status, err.message, type=err.type or None,
                                        param=err.param, code=err.code)

    def stream_error(self, err: p.Error) -> bytes:
        return sse_error_event(err.message, code=err.code or err.kind.value,
                                      status=err.status) + b"data: [DONE]\n\n"
