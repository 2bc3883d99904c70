"""The reference ceiling for the overhead benchmark: a bare Starlette app under uvicorn.

It answers the same requests as the gateway with the echo worker (a JSON body,
or ``max_tokens`` SSE chunks), doing only what any JSON server must: read the
body and decode it. Run with the gateway's uvicorn settings:
``python -m bench.baseline_app --port P``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.echo_worker import sse_chunk

MODEL = "echo"


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello, world")


async def chat(request: Request) -> Response:
    body = msgspec.json.decode(await request.body())
    n = int(body.get("max_tokens") or 16)
    if body.get("stream"):
        return StreamingResponse(_stream(n), media_type="text/event-stream; charset=utf-8")
    out = {"id": "chatcmpl-bare", "object": "chat.completion", "created": 0, "model": MODEL,
           "choices": [{"index": 0, "finish_reason": "length",
                        "message": {"role": "assistant", "content": " tok" * n}}],
           "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}}
    return Response(msgspec.json.encode(out), media_type="application/json")


async def _stream(n: int) -> AsyncIterator[str]:
    yield sse_chunk(MODEL, "bare", {"role": "assistant", "content": ""})
    piece = sse_chunk(MODEL, "bare", {"content": " tok"})
    for _ in range(n):
        yield piece
    yield "data: [DONE]\n\n"


app = Starlette(routes=[Route("/hello", hello, methods=["GET"]),
                        Route("/v1/chat/completions", chat, methods=["POST"])])


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-baseline")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn settings as `zoe-vllm serve` (gateway/cli/main.py).
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                timeout_keep_alive=30, h11_max_incomplete_event_size=64 * 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
