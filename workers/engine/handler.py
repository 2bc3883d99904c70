"""Run one OpenAI request through vLLM's serving layer and report it as messages."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from shared import protocol as p
from workers.engine import vllm_compat
from workers.engine.engine import Engine

log = logging.getLogger("zoe.worker")

Send = Callable[[p.Message], Awaitable[None]]
REQUEST_CLASS: dict[p.Endpoint, vllm_compat.Name] = {
    p.Endpoint.CHAT: "ChatCompletionRequest", p.Endpoint.COMPLETION: "CompletionRequest",
    p.Endpoint.RESPONSES: "ResponsesRequest"}


def engine_request_ids(req: p.Request, body: Any) -> list[str]:
    """The ids vLLM's serving layer gives this request inside the engine.

    Chat uses ``chatcmpl-<id>``; completions ``cmpl-<id>-<prompt index>``; embeddings
    ``embd-<id>-<input index>``; responses ``resp_<id>_0``. Closing the response
    generator frees a sequence only at garbage collection, so aborts name these ids.
    """
    if req.endpoint is p.Endpoint.CHAT:
        return [f"chatcmpl-{req.request_id}"]
    if req.endpoint is p.Endpoint.RESPONSES:
        # vLLM runs a response as sub-requests `<id>_<n>` (one per built-in tool turn);
        # we offer no built-in tools, so there is one.
        return [f"{body.request_id}_0"]
    if req.endpoint is p.Endpoint.EMBEDDINGS:
        return [f"embd-{req.request_id}-{i}" for i in range(_count(getattr(body, "input",
                                                                              None)))]
    return [f"cmpl-{req.request_id}-{i}" for i in range(_count(getattr(body, "prompt", None)))]


def _count(prompts: Any) -> int:
    """How many prompts a completion's ``prompt`` or an embedding's ``input`` holds: a
    list of strings or of token lists is several, a string or one token list is one."""
    if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int):
        return len(prompts)
    return 1


def response_events(event: Any) -> str:
    """One Responses API event as vLLM's own server writes it (typed SSE)."""
    kind = getattr(event, "type", "unknown")
    return f"event: {kind}\ndata: {event.model_dump_json(indent=None, by_alias=True)}\n\n"


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "OutOfMemoryError" or "out of memory" in text or "cannot allocate" in text


class Handler:
    """Serves requests on one engine; owns nothing but the engine reference."""

    def __init__(self, engine: Engine, send: Send) -> None:
        self.engine = engine
        self.send = send

    def parse(self, req: p.Request) -> Any:
        if req.endpoint is p.Endpoint.EMBEDDINGS:
            import pydantic

            body = pydantic.TypeAdapter(vllm_compat.resolve("EmbeddingRequest")
                                        ).validate_json(req.body)
        else:
            body = vllm_compat.resolve(REQUEST_CLASS[req.endpoint]).model_validate_json(
                req.body)
        # Our id becomes vLLM's, so an abort can name the engine request.
        body.request_id = f"resp_{req.request_id}" if req.endpoint is p.Endpoint.RESPONSES \
            else req.request_id
        return body

    def serving(self, endpoint: p.Endpoint) -> Any:
        s = self.engine.serving
        return {p.Endpoint.CHAT: s.chat, p.Endpoint.COMPLETION: s.completion,
                p.Endpoint.EMBEDDINGS: s.embedding, p.Endpoint.RESPONSES: s.responses}[endpoint]

    async def call(self, endpoint: p.Endpoint, serving: Any, body: Any) -> Any:
        """vLLM's answer to ``body``: an ErrorResponse, a pydantic body, a starlette
        Response (embeddings) or an async iterator of SSE strings or Responses events."""
        if endpoint is p.Endpoint.CHAT:
            return await serving.create_chat_completion(body, None)
        if endpoint is p.Endpoint.COMPLETION:
            return await serving.create_completion(body, None)
        if endpoint is p.Endpoint.RESPONSES:
            return await serving.create_responses(body, None)
        # 0.32's pooling serving objects are called; 0.14.0's had create_embedding.
        create = getattr(serving, "create_embedding", None) or serving
        return await create(body, None)

    async def run(self, req: p.Request, *, before_engine: Callable[[], None] | None = None,
                  on_chunk: Callable[[], None] | None = None) -> None:
        """Serve ``req``; every outcome ends in exactly one terminal message.

        ``before_engine`` and ``on_chunk`` are fault-injection hooks (tests only).
        """
        import pydantic

        ErrorResponse = vllm_compat.resolve("ErrorResponse")
        EngineDeadError = vllm_compat.resolve("EngineDeadError")
        serving = self.serving(req.endpoint)
        rid = req.request_id
        streamed = False
        body: Any = None
        try:
            if serving is None:
                # The gateway refuses these first; a worker must still never crash on one.
                await self.send(p.Error(
                    request_id=rid, kind=p.ErrorKind.BAD_REQUEST, status=400,
                    message=f"this model does not serve {req.endpoint.value}"))
                return
            body = self.parse(req)
            if req.endpoint is p.Endpoint.COMPLETION and _unstreamable(body):
                await self.send(p.Error(
                    request_id=rid, kind=p.ErrorKind.BAD_REQUEST, status=400, param="echo",
                    message="`echo` with `logprobs` and `n` > 1 cannot be streamed (vLLM fails "
                            "mid-stream with a KeyError); set `stream` to false or `n` to 1"))
                return
            if before_engine is not None:
                before_engine()
            result = await self.call(req.endpoint, serving, body)
            if isinstance(result, ErrorResponse):
                await self.send(_from_error_response(rid, result))
            elif hasattr(result, "__aiter__"):
                events = req.endpoint is p.Endpoint.RESPONSES
                try:
                    async for chunk in result:
                        streamed = True
                        await self.send(p.Chunk(request_id=rid, data=response_events(chunk)
                                                if events else chunk))
                        if on_chunk is not None:
                            on_chunk()
                finally:
                    await result.aclose()
                await self.send(p.Response(request_id=rid, status=200, body=b""))
            elif hasattr(result, "status_code"):  # a starlette Response (embeddings)
                status = int(result.status_code)
                if status >= 400:
                    await self.send(_from_body(rid, status, bytes(result.body)))
                else:
                    await self.send(p.Response(request_id=rid, status=status,
                                               body=bytes(result.body)))
            else:
                # As vLLM's routers write them: the Responses API's models use aliases.
                dumped = result.model_dump_json(by_alias=req.endpoint is p.Endpoint.RESPONSES)
                await self.send(p.Response(request_id=rid, status=200, body=dumped.encode()))
        except pydantic.ValidationError as exc:
            await self.send(_bad_request(rid, exc))
        except EngineDeadError as exc:
            await self.send(p.Error(request_id=rid, kind=p.ErrorKind.ENGINE_DEAD, status=503,
                                    message=f"model engine died: {exc}", streamed=streamed))
            raise
        except Exception as exc:
            if _is_oom(exc):
                log.error("request %s ran out of memory: %s", rid, exc)
                await self.send(p.Error(request_id=rid, kind=p.ErrorKind.OOM, status=503,
                                        message=f"out of memory: {exc}", type="server_error",
                                        code="out_of_memory", streamed=streamed))
            else:
                # vLLM's own mapping: client errors (validation, bad values) -> 4xx.
                err = _from_error_response(
                    rid, vllm_compat.error_response(exc, serving or self.engine.serving.chat),
                    streamed)
                if err.status >= 500:
                    log.exception("request %s failed", rid)
                await self.send(err)
        finally:
            # Aborting a finished request is a no-op; an unfinished one (the
            # task was cancelled, or the stream raised) must not stay queued.
            if body is not None:
                await self.engine.client.abort(engine_request_ids(req, body))


def _unstreamable(body: Any) -> bool:
    """A completion vLLM 0.32 accepts and then fails mid-stream (found by tests/e2e/test_fuzz)."""
    return bool(body.stream and body.echo and body.logprobs is not None and (body.n or 1) > 1)


def _from_error_response(rid: str, response: Any, streamed: bool = False) -> p.Error:
    err = response.error
    status = int(err.code)
    kind = p.ErrorKind.BAD_REQUEST if status < 500 else p.ErrorKind.INTERNAL
    # vLLM's `type` names a Python-ish class; the gateway maps status to OpenAI's types.
    return p.Error(request_id=rid, kind=kind, status=status, message=err.message, type="",
                   param=err.param, streamed=streamed)


def _from_body(rid: str, status: int, body: bytes) -> p.Error:
    """An error vLLM answered as a response body (``{"error": {"message": ...}}``)."""
    message = f"the model answered HTTP {status}"
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        err = json.loads(body).get("error")
        detail = err.get("message") if isinstance(err, dict) else err
        if isinstance(detail, str):
            message = detail
    kind = p.ErrorKind.BAD_REQUEST if status < 500 else p.ErrorKind.INTERNAL
    return p.Error(request_id=rid, kind=kind, status=status, message=message, type="")


def _bad_request(rid: str, exc: Any) -> p.Error:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    msg = first.get("msg", str(exc))
    message = f"{loc}: {msg}" if loc else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return p.Error(request_id=rid, kind=p.ErrorKind.BAD_REQUEST, status=400, message=message,
                   type="", param=loc or None)

