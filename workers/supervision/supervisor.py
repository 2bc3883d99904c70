"""The supervisor: owns the worker processes, their lifecycle and each model's slot.

It runs in the main process (never importing vLLM). Each worker's lifecycle
operations (start, stop, restart) are serialized by that worker's lock, so a
swap can never interleave with a restart. Every state change goes through
:meth:`workers.supervision.handle.WorkerHandle.set_state`. What to stop and what
to bring back is decided by :func:`workers.supervision.eviction.plan`; whether a
model is healthy, by :mod:`workers.supervision.probes`. This module acts on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from shared import protocol as p
from shared.config import Backend, LoadedConfig
from shared.engine_args import engine_env, has_accelerator
from workers.supervision import eviction, lifecycle, probes
from workers.supervision.admission import Admission
from workers.supervision.backends import LocalBackend, ModelBackend
from workers.supervision.dispatch import Dispatcher, WorkerUnavailable
from workers.supervision.handle import Event, WorkerHandle
from workers.supervision.lifecycle import State
from workers.supervision.probes import Verdict
from workers.supervision.remote import RemoteBackend
from workers.supervision.slot import ModelSlot

log = logging.getLogger("zoe.supervisor")

EVICT_TICK_S = 0.5  # how often idle limits (keep_alive, idle_unload_s) are checked


class Supervisor:
    def __init__(self, cfg: LoadedConfig) -> None:
        self.cfg = cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"ipc://{cfg.run_dir / 'workers.sock'}"
        self.dispatcher = Dispatcher(self.endpoint, self.on_message)
        self.listeners: list[Callable[[Event], None]] = []
        self.slots: dict[str, ModelSlot] = {}
        for m in cfg.models:
            backend: ModelBackend = LocalBackend(self.dispatcher, m.name) \
                if m.backend is Backend.VLLM else RemoteBackend(cfg, m)
            self.slots[m.name] = ModelSlot(
                m, WorkerHandle(self, m), backend,
                Admission(m.max_num_seqs, m.max_queued, cfg.server.queue_timeout_s))
        self._tasks: set[asyncio.Task[Any]] = set()
        self.swap_lock = asyncio.Lock()  # one eviction plan carried out at a time
        self.displaced: dict[str, str] = {}  # swapped-out model -> on-demand model
        self._loading: dict[str, asyncio.Task[bool]] = {}
        self.closing = False

    def handle(self, name: str) -> WorkerHandle:
        return self.slots[name].handle

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
        for slot in self.slots.values():
            if slot.remote:
                self.spawn_task(self._watch_remote(slot))
        eager = [s for s in self.slots.values() if not s.model.on_demand and not s.remote]
        if self.cfg.config.supervisor.sequential_start:
            # On a GPU the engine sizes itself from free memory: one at a time.
            self.spawn_task(self._start_in_order([s.name for s in eager]))
        else:
            for s in eager:
                self.spawn_task(self.start_worker(s.name))
        self.spawn_task(self._probe_loop())
        self.spawn_task(self._evict_loop())

    async def _start_in_order(self, names: list[str]) -> None:
        for name in names:
            await self.start_worker(name)

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(self.stop_worker(n, "server shutting down")
                               for n in self.slots), return_exceptions=True)
        await self.dispatcher.close()
        for slot in self.slots.values():
            await slot.backend.close()

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("supervisor task failed", exc_info=task.exception())

    # ----- readiness: the one rule for when a request may load a model ---------
    async def ensure_ready(self, name: str, *, whole_load: bool = False) -> bool:
        """True once ``name`` is READY. A model loaded on demand, or unloaded by a client,
        is loaded by this call; a failed one, or a remote that is down, is not waited for.
        ``whole_load``: wait for a whole load (an Ollama load request), not just
        ``request_wait_s``."""
        slot = self.slots[name]
        if slot.state is State.READY:
            return True
        if slot.state is State.FAILED or slot.remote:
            return False  # a remote that is down is skipped until its probes recover
        if (slot.model.on_demand or slot.info.unloaded) and slot.state is State.STOPPED:
            self.request_load(name)
        elif whole_load and slot.state is State.STOPPED and not self._load_under_way(name):
            return False  # stopped on purpose (swapped out): nothing is coming
        sup = self.cfg.config.supervisor
        bound = sup.start_timeout_s if whole_load else \
            slot.model.request_wait_s or sup.request_wait_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slot.handle.ready.wait(), bound)
            return True
        return False

    def _load_under_way(self, name: str) -> bool:
        task = self._loading.get(name)
        return task is not None and not task.done()

    def on_oom(self, name: str) -> None:
        log.error("worker %s ran out of memory: unloading and reloading it", name)
        self.spawn_task(self.restart_worker(name, "out of memory", 2.0))

    # ----- lifecycle operations ---------------------------------------------
    async def start_worker(self, name: str, reason: str = "start") -> bool:
        """Start ``name`` and wait until READY; False if it failed or timed out."""
        w = self.handle(name)
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
            w.info.stage, w.info.detail = p.Stage.SPAWNING, ""
            # ZOE_VLLM_WORKER_MODULE swaps in another module speaking the same
            # protocol (benchmarks and tests only: bench/echo_worker.py, a worker
            # without a model, isolates the gateway's own overhead).
            module = os.environ.get("ZOE_VLLM_WORKER_MODULE") or "workers.engine.worker"
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
        w = self.handle(name)
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
        w = self.handle(name)
        async with w.lock:
            await self._terminate(w, reason)
            await asyncio.sleep(pause_s)
            w.info.restarts += 1
            return await self._start_locked(w, reason)

    async def reload(self, name: str, reason: str) -> bool:
        """An operator's reload: forget past crashes (leaving FAILED), then restart."""
        self.handle(name).policy.reset()
        return await self.restart_worker(name, reason)

    # ----- on-demand models, client unloads and eviction ------------------------
    def request_load(self, name: str) -> None:
        """Start loading ``name`` (on demand, or unloaded by a client) unless under way."""
        if not self._load_under_way(name):
            load = self.load_on_demand(name) if self.slots[name].model.on_demand else \
                self.start_worker(name, "loaded again by a request")
            self._loading[name] = asyncio.create_task(load)

    def residents(self) -> dict[str, eviction.Resident]:
        now = time.monotonic()
        return {name: slot.resident(now) for name, slot in self.slots.items()}

    async def load_on_demand(self, name: str) -> bool:
        """Swap ``name`` in: carry out the eviction plan for it, then load it."""
        h = self.handle(name)
        async with self.swap_lock:
            if h.state is State.READY:
                return True
            plan = eviction.plan(self.residents(), self.displaced, target=name)
            await self._carry_out(plan)
            h.info.swapped_in += 1
            ok = await self.start_worker(name, "requested on demand")
        if not ok:
            await self.evict()  # gives back what it displaced
        return ok

    async def evict(self) -> None:
        """Carry out the eviction plan of this moment (idle limits, restores)."""
        async with self.swap_lock:
            await self._carry_out(eviction.plan(self.residents(), self.displaced))

    async def _carry_out(self, plan: eviction.Plan) -> None:
        """Stops first (their memory is what a restore needs), then restores."""
        for stop in plan.stop:
            slot = self.slots[stop.model]
            if stop.unloaded:
                slot.info.unloaded = True
                slot.keep_alive_s = None  # the next request's keep_alive applies afresh
            elif stop.model in plan.displaced:
                slot.info.swapped_out += 1
            log.info("model %s: %s; unloading it", stop.model, stop.reason)
            await self.drain_and_stop(slot.handle, stop.reason)
        before, self.displaced = self.displaced, dict(plan.displaced)
        for victim in plan.restore:
            if not self.closing:
                by = before.get(victim, "the on-demand model")
                self.spawn_task(self.start_worker(victim, f"restored after {by} unloaded"))

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(EVICT_TICK_S)
            if not eviction.plan(self.residents(), self.displaced).empty:
                await self.evict()

    async def unload(self, name: str, reason: str) -> None:
        """Unload ``name`` at a client's request (drained first); the next request for it
        loads it again (:meth:`ensure_ready`)."""
        slot = self.slots[name]
        async with self.swap_lock:
            slot.keep_alive_s = None
            if slot.state not in lifecycle.ALIVE or slot.remote:
                return
            slot.info.unloaded = True
            await self.drain_and_stop(slot.handle, reason)

    def keep_alive(self, name: str, seconds: float | None) -> None:
        """Apply an Ollama request's ``keep_alive`` once its answer is sent: seconds unused
        before unloading (0: now; None or math.inf, Ollama's "-1": the server's own
        policy)."""
        slot = self.slots[name]
        if slot.remote:
            return
        slot.keep_alive_s = None if seconds is None or math.isinf(seconds) else seconds
        if seconds == 0:
            self.spawn_task(self.evict())

    async def drain_and_stop(self, w: WorkerHandle, reason: str) -> None:
        """No new requests; let in-flight ones finish (bounded), then stop."""
        async with w.lock:
            if w.state is State.READY:
                w.set_state(State.DRAINING, reason)
            bound = self.cfg.config.supervisor.drain_timeout_s
            if not await self.slots[w.model.name].backend.usage.wait_idle(bound):
                log.warning("worker %s: requests still running after %.0fs of draining "
                            "(supervisor.drain_timeout_s); stopping anyway", w.model.name, bound)
            await self._terminate(w, reason)

    # ----- health probes: they judge, this acts ---------------------------------
    async def _probe_loop(self) -> None:
        interval = self.cfg.config.supervisor.health_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.probe_all()

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe_local(s) for s in self.slots.values()
                               if s.state is State.READY and not s.remote))

    async def _probe_local(self, slot: ModelSlot) -> None:
        verdict = await probes.probe(slot.backend, slot.info, remote=False,
                                     timeout_s=self.cfg.config.supervisor.probe_timeout_s)
        slot.verdict = verdict
        if verdict is Verdict.RESTART and slot.state is State.READY:
            self.spawn_task(self.restart_worker(
                slot.name, f"{probes.PROBE_STRIKES} failed health probes",
                probes.RECOVERY_PAUSE_S))

    async def _watch_remote(self, slot: ModelSlot) -> None:
        """Probe a remote backend forever: up after one success, down after three failures.

        A remote has no process to restart; while it is down requests skip it (straight
        to the fallback chain), and it is probed more often so that it comes back soon
        after its server does."""
        sup = self.cfg.config.supervisor
        while True:
            verdict = await probes.probe(slot.backend, slot.info, remote=True,
                                         timeout_s=sup.probe_timeout_s)
            slot.verdict = verdict
            h = slot.handle
            if verdict is Verdict.UP:
                h.info.ready_at, h.info.ready_mono = time.time(), time.monotonic()
                h.info.stage, h.info.detail = p.Stage.READY, ""
                h.set_state(State.READY, f"remote {slot.model.backend.value} backend answers")
            elif verdict is Verdict.DOWN:
                reason = (f"remote backend down: {probes.PROBE_STRIKES} failed health probes "
                          f"({h.info.last_error})")
                h.info.stage, h.info.detail = p.Stage.DOWN, reason
                h.set_state(State.STOPPED, reason)
            interval = sup.health_interval_s if h.state is State.READY else \
                min(sup.health_interval_s, 5.0)
            await asyncio.sleep(interval)

    # ----- messages from workers --------------------------------------------
    def on_message(self, model: str, msg: p.Message) -> None:
        slot = self.slots.get(model)
        if slot is None:
            log.warning("message from unknown worker %r ignored", model)
            return
        w = slot.handle
        if isinstance(msg, p.Stats):
            w.info.stats = msg
        elif isinstance(msg, p.Progress):
            w.info.stage, w.info.detail = msg.stage, msg.detail
            if msg.stage is p.Stage.WARMING_UP and w.state is State.STARTING:
                w.set_state(State.WARMING, "engine loaded")
        elif isinstance(msg, p.Ready):
            w.info.ready_at = time.time()
            w.info.ready_mono = time.monotonic()
            w.info.load_seconds = msg.load_seconds
            w.info.warmup_seconds = msg.warmup_seconds
            w.info.max_model_len = msg.max_model_len
            w.info.stage, w.info.detail = p.Stage.READY, ""
            w.info.probe_failures = 0
            if w.state in (State.STARTING, State.WARMING):
                w.set_state(State.READY, f"loaded in {msg.load_seconds:.1f}s, warm-up "
                                         f"{msg.warmup_seconds:.1f}s")
        elif isinstance(msg, p.Hello):
            w.info.stage = p.Stage.CONNECTED
        else:
            log.warning("unexpected %s from %s", type(msg).__name__, model)
