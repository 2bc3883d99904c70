"""One way to reach any model: a local worker over ZeroMQ, or a remote server."""

from __future__ import annotations

from typing import Any

import msgspec

from shared import protocol as p
from shared.dispatch import Call, Dispatcher
from shared.remote import RemoteBackend


class Backends:
    def __init__(self, dispatcher: Dispatcher, remotes: dict[str, RemoteBackend]) -> None:
        self.dispatcher = dispatcher
        self.remotes = remotes

    async def submit(self, model: str, endpoint: p.Endpoint, body: dict[str, Any],
                     stream: bool) -> Call:
        """Send an OpenAI-shaped ``body`` to ``model``; raises WorkerUnavailable."""
        remote = self.remotes.get(model)
        if remote is not None:
            return await remote.submit(endpoint, body, stream)
        # vLLM checks `model` against its served name: the worker's own name.
        body["model"] = model
        return await self.dispatcher.submit(model, endpoint, msgspec.json.encode(body), stream)

    def release(self, call: Call) -> None:
        remote = self.remotes.get(call.model)
        if remote is not None:
            remote.release(call)
        else:
            self.dispatcher.release(call)

    def active(self, model: str) -> int:
        remote = self.remotes.get(model)
        return remote.active if remote is not None else self.dispatcher.active.get(model, 0)
