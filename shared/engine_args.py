"""Translate a model's config into vLLM's own command-line arguments.

The worker parses these with vLLM's ``make_arg_parser`` (so every engine and
serving option means exactly what it means to ``vllm serve``), and the
benchmark starts vLLM's own server with the same list, so the two are compared
on identical settings. No vLLM import here: the gateway uses this module too.
"""

from __future__ import annotations

import json
import os

from shared.config import JsonWhitespace, LoadedConfig, ModelConfig, Role

GIB = 1024**3
# Our own tool parser (workers/vllm_plugins/tool_parser.py), loaded into vLLM as a plugin.
ZOE_TOOL_PARSER = "zoe_json"
ZOE_TOOL_PARSER_MODULE = "workers.engine.vllm_plugins.tool_parser"


def engine_argv(cfg: LoadedConfig, model: ModelConfig, *, accelerator: bool) -> list[str]:
    """vLLM server arguments for ``model``; ``accelerator`` is False on a CPU."""
    argv = [
        "--model", str(cfg.model_path(model)),
        "--served-model-name", model.name,
        "--max-model-len", str(model.max_model_len),
        "--max-num-seqs", str(model.max_num_seqs),
        "--max-num-batched-tokens", str(model.max_num_batched_tokens),
        "--dtype", model.dtype,
        "--enable-chunked-prefill" if model.enable_chunked_prefill
        else "--no-enable-chunked-prefill",
        "--enable-prefix-caching" if model.enable_prefix_caching
        else "--no-enable-prefix-caching",
        "--disable-uvicorn-access-log",
    ]
    if model.role is Role.EMBEDDING:
        # vLLM's pooling runner: the engine embeds (pooling and normalisation from the
        # model's sentence-transformers files) and the serving layer is its embeddings one.
        argv += ["--runner", "pooling"]
    if model.block_size is not None:
        argv += ["--block-size", str(model.block_size)]
    if model.enforce_eager:
        argv.append("--enforce-eager")
    if model.quantization:
        argv += ["--quantization", model.quantization]
    if accelerator:
        if model.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", str(model.gpu_memory_utilization)]
        else:
            argv += ["--kv-cache-memory-bytes", str(int(model.kv_cache_gib * GIB))]
            fraction = own_memory_fraction(cfg, model)
            if fraction is not None:
                # vLLM refuses to start unless free memory >= total x
                # gpu_memory_utilization (default 0.92), even with an explicit KV
                # budget, so a second worker on the device never would: request
                # this worker's own footprint instead.
                argv += ["--gpu-memory-utilization", f"{fraction:.3f}"]
    if model.tool_call_parser:
        # Strict schemas make `required`/named tool_choice produce valid calls
        # even from a small model (measured with SmolLM2, see DESIGN.md).
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", model.tool_call_parser,
                 "--tool-strict-level", "parameter"]
        if model.tool_call_parser == ZOE_TOOL_PARSER:
            argv += ["--tool-parser-plugin", ZOE_TOOL_PARSER_MODULE]
    template = cfg.chat_template_path(model)
    if template is not None:
        argv += ["--chat-template", str(template)]
    if model.role is Role.VISION:
        argv += ["--limit-mm-per-prompt", f'{{"image": {model.limit_images_per_prompt}}}']
    if model.json_whitespace is JsonWhitespace.COMPACT and model.role is not Role.EMBEDDING:
        # vLLM takes this engine-wide only, and only with a named backend: xgrammar
        # is the one its "auto" picks first. Ollama's grammars bound whitespace too.
        argv += ["--structured-outputs-config",
                 '{"backend":"xgrammar","disable_any_whitespace":true}']
    if model.mm_processor_kwargs:
        argv += ["--mm-processor-kwargs",
                 json.dumps(model.mm_processor_kwargs, separators=(",", ":"), sort_keys=True)]
    return argv


def own_memory_fraction(cfg: LoadedConfig, model: ModelConfig) -> float | None:
    """This worker's weights + KV + CUDA runtime as a fraction of the device's memory,
    or None where either is unknown (then vLLM's default applies)."""
    from shared import budget, platform

    memory = platform.device_memory()
    try:
        weights, _ = budget.weights(model, cfg.model_path(model))
    except budget.BudgetError:
        return None
    if memory is None or memory.total_bytes <= 0:
        return None
    kind = budget.MemoryKind.UNIFIED if platform.jetson_release() else budget.MemoryKind.DISCRETE
    cuda = budget.OVERHEADS[kind].cuda_gib
    return budget.requested_fraction(weights + model.kv_cache_gib + cuda, memory.total_gib)


def engine_env(model: ModelConfig, *, accelerator: bool) -> dict[str, str]:
    """Environment for a worker (or a reference ``vllm serve``) of ``model``."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not accelerator:
        env["VLLM_CPU_KVCACHE_SPACE"] = _gib_str(model.kv_cache_gib)
        if model.cpu_cores is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = model.cpu_cores
    env.update(model.env)
    return env


def _gib_str(gib: float) -> str:
    # VLLM_CPU_KVCACHE_SPACE is parsed as an integer number of GiB.
    return str(max(1, round(gib)))


def has_accelerator() -> bool:
    """True where vLLM should use a GPU: an NVIDIA device node exists."""
    override = os.environ.get("ZOE_VLLM_DEVICE")
    if override:
        return override.lower() != "cpu"
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-gpu") or \
        os.path.exists("/etc/nv_tegra_release")
