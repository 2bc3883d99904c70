"""Build vLLM's engine and its own OpenAI serving layer inside a worker process.

We parse the model's arguments with vLLM's ``make_arg_parser`` and wire the
serving objects with vLLM's ``init_app_state``, exactly as ``vllm serve``
does, so chat templates, tool parsers, structured output, stop handling and
usage accounting are vLLM's own. Every vLLM name comes through
``workers.engine.vllm_compat``, which finds it on vLLM 0.32 and on the Jetson base
image's vLLM 0.14.0 alike.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from shared.protocol import Stats
from workers.engine import vllm_compat

log = logging.getLogger("zoe.worker")


@dataclass
class Engine:
    """The engine client plus the serving objects a worker calls."""

    client: Any  # vllm.v1.engine.async_llm.AsyncLLM
    serving: vllm_compat.Serving  # vLLM's chat, completion, embeddings, responses objects
    max_model_len: int
    stats: EngineStats


class EngineStats:
    """Latest scheduler figures, fed by vLLM's stat-logger hook.

    Instances double as vLLM ``StatLoggerFactory`` callables: vLLM calls the
    factory with ``(vllm_config, engine_index)`` and expects a logger back.
    """

    def __init__(self, model: str, on_change: Callable[[], None] | None = None) -> None:
        self.model = model
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self._prefix_queries = 0
        self._prefix_hits = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.on_change = on_change

    def snapshot(self, active_requests: int) -> Stats:
        hit_rate = self._prefix_hits / self._prefix_queries if self._prefix_queries else 0.0
        return Stats(model=self.model, running=self.running, waiting=self.waiting,
                     kv_cache_usage=self.kv_cache_usage, prefix_cache_hit_rate=hit_rate,
                     active_requests=active_requests, prompt_tokens=self.prompt_tokens,
                     generation_tokens=self.generation_tokens)

    def record(self, scheduler_stats: Any, iteration_stats: Any = None) -> None:
        tokens = 0
        if iteration_stats is not None:
            # Counted here, not from responses: streams carry usage only on request.
            prompt = int(iteration_stats.num_prompt_tokens)
            generated = int(iteration_stats.num_generation_tokens)
            self.prompt_tokens += prompt
            self.generation_tokens += generated
            tokens = prompt + generated
        if scheduler_stats is None:
            if tokens and self.on_change is not None:
                self.on_change()
            return
        changed = bool(tokens) or (
            scheduler_stats.num_running_reqs, scheduler_stats.num_waiting_reqs) != (
            self.running, self.waiting)
        self.running = scheduler_stats.num_running_reqs
        self.waiting = scheduler_stats.num_waiting_reqs
        self.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
        prefix = scheduler_stats.prefix_cache_stats
        self._prefix_queries += int(getattr(prefix, "queries", 0))
        self._prefix_hits += int(getattr(prefix, "hits", 0))
        if changed and self.on_change is not None:
            self.on_change()

    def __call__(self, vllm_config: Any, engine_index: int = 0) -> Any:
        StatLoggerBase = vllm_compat.resolve("StatLoggerBase")
        stats = self

        class _Logger(StatLoggerBase):  # type: ignore[misc,valid-type]  # a class from vLLM
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                stats.record(scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)


def parse_args(argv: list[str]) -> Any:
    args, dropped = vllm_compat.parse_serve_args(argv, prog="zoe-vllm-worker")
    for flag in dropped:
        log.warning("this vLLM has no %s: dropped (%s)", flag,
                    vllm_compat.OPTIONAL_FLAGS[flag][1])
    plugin = getattr(args, "tool_parser_plugin", None)
    if plugin:
        # What `vllm serve` does with the flag: importing the module registers its parser
        # with vLLM's ToolParserManager under the name --tool-call-parser gives.
        importlib.import_module(plugin)
    return args


@asynccontextmanager
async def open_engine(argv: list[str], stats: EngineStats) -> AsyncIterator[Engine]:
    """Start the engine (vLLM spawns its EngineCore child) and its serving layer."""
    AsyncEngineArgs = vllm_compat.resolve("AsyncEngineArgs")
    AsyncLLM = vllm_compat.resolve("AsyncLLM")
    usage = vllm_compat.resolve("UsageContext").OPENAI_API_SERVER

    args = parse_args(argv)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    vllm_config = engine_args.create_engine_config(usage_context=usage)
    # The same keywords in 0.14.0 and 0.32 (tests/unit/test_vllm_compat.py).
    client = AsyncLLM.from_vllm_config(
        vllm_config=vllm_config,
        usage_context=usage,
        stat_loggers=[stats],
        enable_log_requests=False,
        disable_log_stats=False,
    )
    try:
        await client.reset_mm_cache()
        serving = await vllm_compat.init_serving(client, args)
        yield Engine(client=client, serving=serving,
                     max_model_len=int(client.model_config.max_model_len), stats=stats)
    finally:
        client.shutdown()
