"""Build vLLM's engine and its own OpenAI serving layer inside a worker process.

We parse the model's arguments with vLLM's ``make_arg_parser`` and wire the
serving objects with vLLM's ``init_app_state``, exactly as ``vllm serve``
does, so chat templates, tool parsers, structured output, stop handling and
usage accounting are vLLM's own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import State

from shared.protocol import Stats


@dataclass
class Engine:
    """The engine client plus the serving objects a worker calls."""

    client: Any  # vllm.v1.engine.async_llm.AsyncLLM
    chat: Any  # OpenAIServingChat
    completion: Any  # OpenAIServingCompletion
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
        self.updated_at = 0.0

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
        self.updated_at = time.monotonic()
        if changed and self.on_change is not None:
            self.on_change()

    def __call__(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class _Logger(StatLoggerBase):  # type: ignore[misc]
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                stats.record(scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)


def parse_args(argv: list[str]) -> Any:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="zoe-vllm-worker"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    return args


@asynccontextmanager
async def open_engine(argv: list[str], stats: EngineStats) -> AsyncIterator[Engine]:
    """Start the engine (vLLM spawns its EngineCore child) and its serving layer."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    args = parse_args(argv)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    client = AsyncLLM.from_vllm_config(
        vllm_config=vllm_config,
        usage_context=UsageContext.OPENAI_API_SERVER,
        stat_loggers=[stats],
        enable_log_requests=False,
        disable_log_stats=False,
    )
    try:
        await client.reset_mm_cache()
        state = State()
        tasks = await client.get_supported_tasks()
        await init_app_state(client, state, args, tasks)
        yield Engine(client=client, chat=state.openai_serving_chat,
                     completion=state.openai_serving_completion,
                     max_model_len=int(client.model_config.max_model_len), stats=stats)
    finally:
        client.shutdown()
