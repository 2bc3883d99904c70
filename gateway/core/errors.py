"""The one error the request path raises before anything is routed, loaded or queued."""

from __future__ import annotations

from shared import protocol as p


class BadRequest(Exception):
    """A request refused before anything is routed, loaded or queued; each API writes it
    in its own shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class Unsupported(Exception):
    """The routed model cannot serve this request (its endpoint, or tools); each API says
    so in its own words, naming what can."""

    def __init__(self, model: str, endpoint: p.Endpoint, *, tools: bool = False) -> None:
        super().__init__(model)
        self.model, self.endpoint, self.tools = model, endpoint, tools
