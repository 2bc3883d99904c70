"""A worker without a model: answers every REQUEST at once (benchmarks only).

The supervisor starts it instead of ``workers.engine.worker`` when
``ZOE_VLLM_WORKER_MODULE=bench.echo_worker`` (same arguments, same protocol:
HELLO, READY, then CHUNKs + RESPONSE per request, PROBE_RESULT per probe), so
whatever a client measures beyond this worker's own time is the gateway's.

A streamed answer is ``max_tokens`` chat chunks shaped like vLLM's, then a
chunk carrying ``echo_worker_s`` (this worker's time for the request), then
``[DONE]``; a non-streamed answer carries the same field in its JSON body.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import time

import msgspec
import zmq

from shared import protocol as p

PR_SET_PDEATHSIG = 1


def sse_chunk(model: str, rid: str, delta: dict[str, object], extra: str = "") -> str:
    body = (f'{{"id":"chatcmpl-{rid}","object":"chat.completion.chunk","created":0,'
            f'"model":"{model}","choices":[{{"index":0,"delta":{json.dumps(delta)},'
            f'"logprobs":null,"finish_reason":null}}]{extra}}}')
    return f"data: {body}\n\n"


class Echo:
    def __init__(self, model: str, endpoint: str) -> None:
        self.model = model
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, model.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, msg: p.Message) -> None:
        self.sock.send_multipart(p.encode(msg))

    def serve(self) -> None:
        self.send(p.Hello(model=self.model, pid=os.getpid()))
        self.send(p.Ready(model=self.model, max_model_len=2048, load_seconds=0.0,
                          warmup_seconds=0.0))
        while True:
            frames = self.sock.recv_multipart()
            if len(frames) != 2:
                continue
            t0 = time.perf_counter()
            msg = p.decode(frames[0], frames[1])
            if isinstance(msg, p.Request):
                self.answer(msg, t0)
            elif isinstance(msg, p.Probe):
                self.send(p.ProbeResult(probe_id=msg.probe_id, ok=True, seconds=0.0))
            elif isinstance(msg, p.Shutdown):
                return

    def answer(self, req: p.Request, t0: float) -> None:
        body = msgspec.json.decode(req.body)
        n = int(body.get("max_tokens") or 16)
        rid = req.request_id
        if req.stream:
            self.send(p.Chunk(request_id=rid, data=sse_chunk(self.model, rid, {"role": "assistant",
                                                                             "content": ""})))
            piece = sse_chunk(self.model, rid, {"content": " tok"})
            for _ in range(n):
                self.send(p.Chunk(request_id=rid, data=piece))
            spent = time.perf_counter() - t0
            self.send(p.Chunk(request_id=rid, data=sse_chunk(
                self.model, rid, {}, f',"echo_worker_s":{spent:.9f}')))
            self.send(p.Chunk(request_id=rid, data="data: [DONE]\n\n"))
            self.send(p.Response(request_id=rid, status=200, body=b""))
            return
        spent = time.perf_counter() - t0
        out = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": 0,
               "model": self.model, "echo_worker_s": spent,
               "choices": [{"index": 0, "finish_reason": "length",
                            "message": {"role": "assistant", "content": " tok" * n}}],
               "usage": {"prompt_tokens": 1, "completion_tokens": n,
                         "total_tokens": n + 1}}
        self.send(p.Response(request_id=rid, status=200, body=msgspec.json.encode(out)))


def main() -> int:
    parser = argparse.ArgumentParser(prog="zoe-vllm-echo-worker")
    parser.add_argument("--config", required=True)  # accepted like workers.engine.worker's
    parser.add_argument("--model", required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args()
    # Die with the supervisor, as a real worker does.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    Echo(args.model, args.endpoint).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
