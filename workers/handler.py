"""Run one OpenAI request through vLLM's serving layer and report it as messages."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from shared import protocol as p
from workers import vllm_compat
from workers.engine import Engine

log = logging.getLogger("zoe.worker")

Send = Callable[[p.Message], Awaitable[None]]


def engine_request_ids(req: p.Request, body: Any) -> list[str]:
    """The ids vLLM's serving layer gives this request inside the engine.

    Chat uses ``chatcmpl-<id>``; completions use ``cmpl-<id>-<prompt index>``.
    Closing the response generator frees a sequence only at garbage
    collection, so aborts name these ids explicitly.
    """
    if req.endpoint is p.Endpoint.CHAT:
        return [f"chatcmpl-{req.request_id}"]
    prompt = getattr(body, "prompt", None)
    count = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(
        prompt[0], int) else 1
    return [f"cmpl-{req.request_id}-{i}" for i in range(count)]


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
        cls = vllm_compat.resolve("ChatCompletionRequest" if req.endpoint is p.Endpoint.CHAT
                                  else "CompletionRequest")
        body = cls.model_validate_json(req.body)
        # Our id becomes vLLM's, so an abort can name the engine request.
        body.request_id = req.request_id
        return body

    async def run(self, req: p.Request, *, before_engine: Callable[[], None] | None = None,
                  on_chunk: Callable[[], None] | None = None) -> None:
        """Serve ``req``; every outcome ends in exactly one terminal message.

        ``before_engine`` and ``on_chunk`` are fault-injection hooks (tests only).
        """
        import pydantic

        ErrorResponse = vllm_compat.resolve("ErrorResponse")
        EngineDeadError = vllm_compat.resolve("EngineDeadError")
        serving = self.engine.chat if req.endpoint is p.Endpoint.CHAT else \
            self.engine.completion
        rid = req.request_id
        streamed = False
        body: Any = None
        try:
            body = self.parse(req)
            if req.endpoint is p.Endpoint.COMPLETION and _unstreamable(body):
                await self.send(p.Error(
                    request_id=rid, kind=p.ErrorKind.BAD_REQUEST, status=400, param="echo",
                    message="`echo` with `logprobs` and `n` > 1 cannot be streamed (vLLM fails "
                            "mid-stream with a KeyError); set `stream` to false or `n` to 1"))
                return
            if before_engine is not None:
                before_engine()
            if req.endpoint is p.Endpoint.CHAT:
                result = await serving.create_chat_completion(body, None)
            else:
                result = await serving.create_completion(body, None)
            if isinstance(result, ErrorResponse):
                await self.send(_from_error_response(rid, result))
            elif hasattr(result, "__aiter__"):
                try:
                    async for chunk in result:
                        streamed = True
                        await self.send(p.Chunk(request_id=rid, data=chunk))
                        if on_chunk is not None:
                            on_chunk()
                finally:
                    await result.aclose()
                await self.send(p.Response(request_id=rid, status=200, body=b""))
            else:
                await self.send(p.Response(request_id=rid, status=200,
                                           body=result.model_dump_json().encode()))
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
                    rid, vllm_compat.error_response(exc, serving), streamed)
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

