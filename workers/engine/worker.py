"""A model worker: one OS process hosting one vLLM engine, spoken to over ZeroMQ.

Started by the supervisor as ``python -m workers.engine.worker --config F --model M
--endpoint ipc://...``. It connects a DEALER socket whose identity is the model
name, says HELLO, provisions and loads the model (reporting PROGRESS), runs the
warm-up generations, says READY, then serves REQUEST/ABORT/PROBE until SHUTDOWN
or until its parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from shared import config as cfgmod
from shared import protocol as p
from shared.engine_args import engine_argv, has_accelerator
from workers.engine.engine import Engine, EngineStats, open_engine
from workers.engine.faults import Faults
from workers.engine.handler import Handler

log = logging.getLogger("zoe.worker")

WARMUP_PROMPTS = ("Hello! Introduce yourself in one sentence.", "What is 2 + 2?")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM us when the supervisor dies (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Worker:
    def __init__(self, cfg: cfgmod.LoadedConfig, model: cfgmod.ModelConfig,
                 endpoint: str) -> None:
        self.cfg = cfg
        self.model = model
        self.endpoint = endpoint
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, model.name.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.probes: set[asyncio.Task[None]] = set()
        self.faults = Faults.from_env(model.name, flush=self.flush_link)
        self.stopping = asyncio.Event()
        self._stats_dirty = asyncio.Event()

    async def send(self, msg: p.Message) -> None:
        await self.sock.send_multipart(p.encode(msg))

    def flush_link(self) -> None:
        """Block until queued messages reach the gateway (or 5 s pass); the link is
        closed afterwards. LINGER 0 would otherwise drop them at a hard exit."""
        self.ctx.destroy(linger=5000)

    async def progress(self, stage: p.Stage, detail: str = "") -> None:
        log.info("%s: %s %s", self.model.name, stage.value, detail)
        await self.send(p.Progress(model=self.model.name, stage=stage, detail=detail))

    async def run(self) -> None:
        self.faults.on_start()
        self.sock.connect(self.endpoint)
        await self.send(p.Hello(model=self.model.name, pid=os.getpid()))
        t0 = time.monotonic()
        await self.provision()
        await self.progress(p.Stage.LOADING, "starting the vLLM engine")
        stats = EngineStats(self.model.name, on_change=self._stats_dirty.set)
        argv = engine_argv(self.cfg, self.model, accelerator=has_accelerator())
        async with open_engine(argv, stats) as engine:
            load_s = time.monotonic() - t0
            handler = Handler(engine, self.send)
            warm_s = await self.warm_up(handler)
            await self.send(p.Ready(model=self.model.name, max_model_len=engine.max_model_len,
                                    load_seconds=load_s, warmup_seconds=warm_s))
            log.info("%s: READY (loaded in %.1fs, warmed up in %.1fs)", self.model.name,
                     load_s, warm_s)
            stats_task = asyncio.create_task(self.publish_stats(engine))
            try:
                await self.serve(engine, handler)
            finally:
                stats_task.cancel()
                for task in self.tasks.values():
                    task.cancel()
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def provision(self) -> None:
        dest = self.cfg.model_path(self.model)
        if self.model.provision is cfgmod.Provision.NONE:
            if not dest.exists():
                raise SystemExit(f"model path {dest} does not exist (models[].path of "
                                 f"{self.model.name!r}; set `provision` or download it)")
            return
        # In a child process: de-quantizing and re-quantizing hold gigabytes of tensors that
        # a Python process does not give back, and this process lives on beside the engine.
        kind = self.model.provision.value
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.provision.models", kind, str(dest),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert child.stderr is not None
        prefix, last = f"provision {kind}: ", ""
        try:
            async for raw in child.stderr:
                line = raw.decode(errors="replace").rstrip()
                if line.startswith(prefix):
                    await self.progress(p.Stage.PROVISIONING, line.removeprefix(prefix))
                elif line:
                    log.info("%s: %s", self.model.name, line)
                    last = line
            rc = await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        if rc != 0:
            raise RuntimeError(f"provisioning {kind} into {dest} failed (exit {rc}): {last}")

    async def warm_up(self, handler: Handler) -> float:
        """Run the warm-up generations so the first user request is not the slow one."""
        t0 = time.monotonic()
        n = self.cfg.config.supervisor.warmup_requests
        for i in range(n):
            await self.progress(p.Stage.WARMING_UP, f"{i + 1}/{n}")
            # With logprobs: vLLM torch.compiles its token-rank kernel on first use (g++,
            # 30-60 s on a small CPU), which would stall every live request instead.
            result = await self.one_shot(handler, WARMUP_PROMPTS[i % len(WARMUP_PROMPTS)], 16,
                                         logprobs=True)
            if not result:
                raise RuntimeError(f"warm-up generation {i + 1} failed")
        return time.monotonic() - t0

    async def one_shot(self, handler: Handler, prompt: str, max_tokens: int,
                       logprobs: bool = False) -> bool:
        """A real generation (an embedding, on a pooling model) through the serving layer;
        True if it produced a response."""
        endpoint = p.Endpoint.CHAT
        payload: dict[str, Any] = {
            "model": self.model.name, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
            **({"logprobs": True, "top_logprobs": 1} if logprobs else {}),
        }
        if self.model.role is cfgmod.Role.EMBEDDING:
            endpoint, payload = p.Endpoint.EMBEDDINGS, {"model": self.model.name,
                                                         "input": prompt}
        body = msgspec.json.encode(payload)
        rid = f"internal-{time.monotonic_ns()}"
        outcome: list[p.Message] = []

        async def capture(msg: p.Message) -> None:
            outcome.append(msg)

        await Handler(handler.engine, capture).run(
            p.Request(request_id=rid, endpoint=endpoint, body=body, stream=False))
        return bool(outcome) and isinstance(outcome[-1], p.Response)

    async def serve(self, engine: Engine, handler: Handler) -> None:
        while not self.stopping.is_set():
            frames = await self.sock.recv_multipart()
            if len(frames) != 2:
                log.warning("dropping a message of %d frames", len(frames))
                continue
            try:
                msg = p.decode(frames[0], frames[1])
            except p.ProtocolError as exc:
                log.warning("dropping a malformed message: %s", exc)
                continue
            if isinstance(msg, p.Request):
                self.start_request(handler, msg)
            elif isinstance(msg, p.Abort):
                task = self.tasks.get(msg.request_id)
                if task is not None:
                    task.cancel()
            elif isinstance(msg, p.Probe):
                probe = asyncio.create_task(self.probe(handler, msg))
                self.probes.add(probe)
                probe.add_done_callback(self.probes.discard)
            elif isinstance(msg, p.Shutdown):
                log.info("%s: shutdown requested (%s)", self.model.name, msg.reason)
                self.stopping.set()

    def start_request(self, handler: Handler, req: p.Request) -> None:
        if req.request_id in self.tasks:
            log.warning("duplicate request id %s ignored", req.request_id)
            return
        task = asyncio.create_task(self.faults.wrap(handler, req))
        self.tasks[req.request_id] = task
        self._stats_dirty.set()

        def done(_: asyncio.Task[None], rid: str = req.request_id) -> None:
            self.tasks.pop(rid, None)
            self._stats_dirty.set()

        task.add_done_callback(done)

    async def probe(self, handler: Handler, msg: p.Probe) -> None:
        t0 = time.monotonic()
        detail = ""
        try:
            await self.faults.before_probe()
            ok = await self.one_shot(handler, "ping", 1)
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        await self.send(p.ProbeResult(probe_id=msg.probe_id, ok=ok,
                                      seconds=time.monotonic() - t0, detail=detail))

    async def publish_stats(self, engine: Engine) -> None:
        """Relay engine statistics when they change, at most ten times a second."""
        while True:
            await self._stats_dirty.wait()
            self._stats_dirty.clear()
            try:
                await self.send(engine.stats.snapshot(active_requests=len(self.tasks)))
            except Exception:
                # A dead relay would freeze the figures the supervisor and
                # Prometheus show while the model keeps serving: log, go on
                # (the next change of the figures sends them again).
                log.exception("%s: could not relay engine statistics", self.model.name)
            await asyncio.sleep(0.1)


def configure_logging(model: str) -> None:
    # The supervisor points stdout/stderr at logs/<model>.log, so vLLM's own
    # logs and the EngineCore child's land in the same file as ours.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [{model}] %(name)s: %(message)s")


async def amain(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(path=args.config)
    model = cfg.model(args.model)
    worker = Worker(cfg, model, args.endpoint)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    run = asyncio.create_task(worker.run())
    stop = asyncio.create_task(worker.stopping.wait())
    done, _ = await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
    if run in done:
        stop.cancel()
        run.result()  # re-raise a failure so the exit status says so
        return 0
    # Asked to stop: let the engine shut down in order, within the bound.
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(run, cfg.config.supervisor.stop_timeout_s)
    return 0


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the worker on uvloop where it is installed (vLLM depends on it), as
    ``vllm serve`` runs its front end: vLLM's output handling and serving layer
    do several loop operations per token and stream, which uvloop makes cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoe-vllm-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args(argv)
    configure_logging(args.model)
    die_with_parent()
    try:
        return run_event_loop(amain(args))
    finally:
        logging.shutdown()


def end_process_group() -> None:
    """vLLM's EngineCore child shares our process group: never leave it behind."""
    if os.getpgid(0) != os.getpid():
        return  # not started by the supervisor as a group leader: touch nothing
    with contextlib.suppress(OSError):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(os.getpgid(0), signal.SIGTERM)


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        log.exception("worker failed")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    end_process_group()
    os._exit(code)
