"""The supervisor: owns the worker processes and their lifecycle.

It runs in the main process (never importing vLLM). Each worker's lifecycle
operations (start, stop, restart) are serialized by that worker's lock, so a
swap can never interleave with a restart. Every state change goes through
:meth:`workers.handle.WorkerHandle.set_state`. Health probes live in
:mod:`workers.probes`; crash restarts, swaps and drains here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from shared import protocol as p
from shared.backends import Backends
from shared.config import Backend, LoadedConfig
from shared.dispatch import Dispatcher, WorkerUnavailable
from shared.engine_args import engine_env, has_accelerator
from shared.remote import RemoteBackend
from workers import lifecycle
from workers.handle import Event, WorkerHandle
from workers.lifecycle import State
from workers.probes import HealthProbes

log = logging.getLogger("zoe.supervisor")


class Supervisor:
    def __init__(self, cfg: LoadedConfig) -> None:
        self.cfg = cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"ipc://{cfg.run_dir / 'workers.sock'}"
        self.dispatcher = Dispatcher(self.endpoint, self.on_message)
        self.remotes = {m.name: RemoteBackend(cfg, m) for m in cfg.models
                        if m.backend is not Backend.VLLM}
        self.backends = Backends(self.dispatcher, self.remotes)
        self.workers = {m.name: WorkerHandle(self, m) for m in cfg.models}
        self.listeners: list[Callable[[Event], None]] = []
        self.probes = HealthProbes(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.swap_lock = asyncio.Lock()  # one swap (two workers) at a time
        self.swapped_out: dict[str, str] = {}  # displaced model -> on-demand model
        self._loading: dict[str, asyncio.Task[bool]] = {}
        self.closing = False

    # ----- logs -----------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.cfg.logs_dir / f"{name}.log"

    def write_worker_log(self, name: str, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with contextlib.suppress(OSError), open(self.log_path(name), "a") as f:
            f.write(f"{stamp} SUPERVISOR {line}\n")

    # ----- start-up and shut-down ------------------------------------------
    async def start(self) -> None:
        """Bind the link and start every model that is not loaded on demand."""
        self.dispatcher.start()
        for name in self.remotes:
            self.spawn_task(self.probes.watch_remote(self.workers[name]))
        eager = [w for w in self.workers.values()
                 if not w.model.on_demand and w.model.name not in self.remotes]
        if self.cfg.config.supervisor.sequential_start:
            # On a GPU the engine sizes itself from free memory: one at a time.
            self.spawn_task(self._start_in_order(eager))
        else:
            for w in eager:
                self.spawn_task(self.start_worker(w.model.name))
        self.spawn_task(self.probes.run())

    async def _start_in_order(self, workers: list[WorkerHandle]) -> None:
        for w in workers:
            await self.start_worker(w.model.name)

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(self.stop_worker(n, "server shutting down")
                               for n in self.workers), return_exceptions=True)
        await self.dispatcher.close()
        for remote in self.remotes.values():
            await remote.close()

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("supervisor task failed", exc_info=task.exception())

    # ----- lifecycle operations ---------------------------------------------
    async def start_worker(self, name: str, reason: str = "start") -> bool:
        """Start ``name`` and wait until READY; False if it failed or timed out."""
        w = self.workers[name]
        async with w.lock:
            return await self._start_locked(w, reason)

    async def _start_locked(self, w: WorkerHandle, reason: str) -> bool:
        if w.state is State.READY:
            return True
        if w.state not in (State.STOPPED, State.FAILED):
            return await self._wait_ready(w)
        await self._spawn(w, reason)
        return await self._wait_ready(w)

    async def _wait_ready(self, w: WorkerHandle) -> bool:
        timeout = self.cfg.config.supervisor.start_timeout_s
        ready = asyncio.create_task(w.ready.wait())
        exited = asyncio.create_task(w.exited.wait())
        done, pending = await asyncio.wait({ready, exited}, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        if ready in done:
            return True
        if not done:
            msg = (f"not READY after {timeout:.0f}s (raise supervisor.start_timeout_s "
                   f"if loading is just slow; see logs/{w.model.name}.log)")
            w.info.last_error = msg
            log.error("worker %s %s", w.model.name, msg)
            await self._terminate(w, msg)
        return False

    async def _spawn(self, w: WorkerHandle, reason: str) -> None:
        accel = has_accelerator()
        env = {**os.environ, **engine_env(w.model, accelerator=accel)}
        logf = open(self.log_path(w.model.name), "ab")  # noqa: SIM115, ASYNC230 - local, tiny
        try:
            w.expected_exit = False
            w.info.unloaded = False
            w.exited.clear()
            w.set_state(State.STARTING, reason)
            w.info.stage, w.info.detail = "spawning", ""
            # ZOE_VLLM_WORKER_MODULE swaps in another module speaking the same
            # protocol (benchmarks and tests only: bench/echo_worker.py, a worker
            # without a model, isolates the gateway's own overhead).
            module = os.environ.get("ZOE_VLLM_WORKER_MODULE") or "workers.worker"
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, "--config", str(self.cfg.source),
                "--model", w.model.name, "--endpoint", self.endpoint,
                stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                env=env, start_new_session=True)
        except BaseException:
            w.exited.set()
            raise
        finally:
            logf.close()
        w.info.pid = w.proc.pid
        w.watcher = asyncio.create_task(self._watch(w, w.proc))

    async def _watch(self, w: WorkerHandle, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        # Whatever happened, vLLM's EngineCore child (same group) must go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        w.info.pid = None
        w.info.stats = None
        expected = w.expected_exit
        reason = f"exited with code {code}" if code >= 0 else \
            f"killed by {signal.Signals(-code).name}"
        failed = self.dispatcher.fail_model(
            w.model.name, f"model worker {w.model.name!r} {reason}; request aborted")
        if failed:
            log.warning("worker %s: failed %d in-flight request(s)", w.model.name, failed)
        if w.state is not State.STOPPED:
            w.set_state(State.STOPPED, reason if not expected else "stopped")
        w.exited.set()
        if expected or self.closing:
            return
        w.info.crashes += 1
        w.info.last_error = reason
        if w.model.on_demand:
            # Loaded again by its next request; meanwhile the displaced model returns.
            log.warning("on-demand worker %s %s; not restarting it", w.model.name, reason)
            return
        delay = w.policy.on_exit(time.monotonic())
        if delay is None:
            msg = (f"gave up after {w.policy.recent_failures} failures within "
                   f"{w.policy.window_s:.0f}s; last: {reason}")
            w.info.last_error = msg
            w.set_state(State.FAILED, msg)
            return
        log.warning("worker %s %s; restarting in %.1fs", w.model.name, reason, delay)
        self.spawn_task(self._restart_after(w, delay, f"restart after crash ({reason})"))

    async def _restart_after(self, w: WorkerHandle, delay: float, reason: str) -> None:
        await asyncio.sleep(delay)
        async with w.lock:
            if w.state is State.STOPPED and not self.closing:
                w.info.restarts += 1
                await self._start_locked(w, reason)

    async def stop_worker(self, name: str, reason: str = "stop") -> None:
        w = self.workers[name]
        async with w.lock:
            await self._terminate(w, reason)

    async def _terminate(self, w: WorkerHandle, reason: str) -> None:
        """SIGTERM, a bounded wait, then SIGKILL of the worker's process group."""
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        w.expected_exit = True
        if w.state is not State.STOPPING:
            w.set_state(State.STOPPING, reason)
        with contextlib.suppress(WorkerUnavailable):
            await asyncio.wait_for(self.dispatcher.send(w.model.name, p.Shutdown(reason)), 1)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(w.exited.wait(), self.cfg.config.supervisor.stop_timeout_s)
        except TimeoutError:
            log.warning("worker %s did not stop in time; killing it", w.model.name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await w.exited.wait()

    async def restart_worker(self, name: str, reason: str, pause_s: float = 0.0) -> bool:
        """Unload, pause, reload: one operation under the worker's lock."""
        w = self.workers[name]
        async with w.lock:
            await self._terminate(w, reason)
            await asyncio.sleep(pause_s)
            w.info.restarts += 1
            return await self._start_locked(w, reason)

    async def reload(self, name: str, reason: str) -> bool:
        """An operator's reload: forget past crashes (leaving FAILED), then restart."""
        self.workers[name].policy.reset()
        return await self.restart_worker(name, reason)

    # ----- on-demand models and swaps ----------------------------------------
    def request_load(self, name: str) -> None:
        """Start loading ``name`` (on demand, or unloaded by a client) unless under way."""
        task = self._loading.get(name)
        if task is None or task.done():
            load = self.load_on_demand(name) if self.workers[name].model.on_demand else \
                self.start_worker(name, "loaded again by a request")
            self._loading[name] = asyncio.create_task(load)

    async def unload(self, name: str, reason: str) -> None:
        """Unload ``name`` at a client's request (drained first); the next request
        for it loads it again (``Gateway.ensure_ready`` calls :meth:`request_load`)."""
        w = self.workers[name]
        async with self.swap_lock:
            if w.state not in lifecycle.ALIVE:
                return
            w.info.unloaded = True
            await self.drain_and_stop(w, reason)

    async def load_on_demand(self, name: str) -> bool:
        """Swap ``name`` in: drain and unload the model it displaces, then load it."""
        w = self.workers[name]
        async with self.swap_lock:
            if w.state is State.READY:
                return True
            victim_name = w.model.swap_out
            if victim_name is not None:
                victim = self.workers[victim_name]
                if victim.state in lifecycle.ALIVE:
                    await self.drain_and_stop(victim, f"swapped out for {name}")
                    victim.info.swapped_out += 1
                    # Only a model that was loaded is given back: one that was not (unloaded
                    # by keep_alive, or never started) stays as it was.
                    self.swapped_out[victim_name] = name
            w.info.swapped_in += 1
            ok = await self.start_worker(name, "requested on demand")
        if ok:
            self.spawn_task(self._unload_when_idle(w))
        else:
            await self._restore_displaced(name)
        return ok

    async def drain_and_stop(self, w: WorkerHandle, reason: str) -> None:
        """No new requests; let in-flight ones finish (bounded), then stop."""
        async with w.lock:
            if w.state is State.READY:
                w.set_state(State.DRAINING, reason)
            bound = self.cfg.config.supervisor.drain_timeout_s
            if not await self.dispatcher.wait_idle(w.model.name, bound):
                log.warning("worker %s: requests still running after %.0fs of draining "
                            "(supervisor.drain_timeout_s); stopping anyway", w.model.name, bound)
            await self._terminate(w, reason)

    async def _unload_when_idle(self, w: WorkerHandle) -> None:
        idle_s = w.model.idle_unload_s
        name = w.model.name
        while w.state in (State.READY, State.STARTING, State.WARMING):
            last = max(self.dispatcher.last_used.get(name, 0.0), w.info.ready_mono)
            due = last + idle_s - time.monotonic()
            if due > 0 or self.dispatcher.active.get(name, 0):
                await asyncio.sleep(max(0.2, min(due, 5.0)))
                continue
            async with self.swap_lock:
                if self.dispatcher.active.get(name, 0) or w.state is not State.READY:
                    continue
                await self.drain_and_stop(w, f"idle for {idle_s:.0f}s")
            break
        await self._restore_displaced(name)

    async def _restore_displaced(self, by: str) -> None:
        for victim, displacer in list(self.swapped_out.items()):
            if displacer == by:
                del self.swapped_out[victim]
                if not self.closing:
                    self.spawn_task(self.start_worker(victim, f"restored after {by} unloaded"))

    # ----- messages from workers --------------------------------------------
    def on_message(self, model: str, msg: p.Message) -> None:
        w = self.workers.get(model)
        if w is None:
            log.warning("message from unknown worker %r ignored", model)
            return
        if isinstance(msg, p.Stats):
            w.info.stats = msg
        elif isinstance(msg, p.Progress):
            w.info.stage, w.info.detail = msg.stage, msg.detail
            if msg.stage == "warming up" and w.state is State.STARTING:
                w.set_state(State.WARMING, "engine loaded")
        elif isinstance(msg, p.Ready):
            w.info.ready_at = time.time()
            w.info.ready_mono = time.monotonic()
            w.info.load_seconds = msg.load_seconds
            w.info.warmup_seconds = msg.warmup_seconds
            w.info.max_model_len = msg.max_model_len
            w.info.stage, w.info.detail = "ready", ""
            w.info.probe_failures = 0
            if w.state in (State.STARTING, State.WARMING):
                w.set_state(State.READY, f"loaded in {msg.load_seconds:.1f}s, warm-up "
                                         f"{msg.warmup_seconds:.1f}s")
        elif isinstance(msg, p.ProbeResult):
            self.probes.on_result(msg)
        elif isinstance(msg, p.Hello):
            w.info.stage = "connected"
        else:
            log.warning("unexpected %s from %s", type(msg).__name__, model)

    # ----- queries ----------------------------------------------------------
    def is_ready(self, name: str) -> bool:
        return self.workers[name].state is State.READY
