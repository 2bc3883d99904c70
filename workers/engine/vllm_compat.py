"""Where vLLM keeps what the workers use, on each vLLM the workers run on.

The workers are written against vLLM 0.32 (``requirements/cpu.lock``). The
Jetson image's default base (``deploy/Dockerfile.jetson``) carries vLLM 0.14.0,
whose OpenAI serving layer still lived in ``vllm.entrypoints.openai``; by 0.32
it had moved to ``vllm.entrypoints.launchers``, ``vllm.entrypoints.serve`` and
one package per endpoint under ``vllm.entrypoints.openai``. Every vLLM name the
workers use is looked up here: where 0.32 keeps it first, then where 0.14.0
kept it. Where the two behave differently the bridge looks at what the running
vLLM has (a parameter, a parser option), not at its version string.

The 0.14.0 places and signatures are tested without 0.14 installed, against a
recording of the 0.14.0 wheel's sources (``tests/unit/data/vllm_0_14_api.json``,
written by ``scripts/record_vllm_api.py``; ``tests/unit/test_vllm_compat.py``).

Importing this module imports no vLLM: ``deploy/check_image.py`` and the tests
load it first and resolve names on demand.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

Place = tuple[str, str]
"""``(module, attribute)``; the attribute may be dotted (a class member)."""

Name = Literal[
    "StatLoggerBase", "make_arg_parser", "validate_parsed_serve_args",
    "FlexibleArgumentParser", "AsyncEngineArgs", "init_app_state", "UsageContext",
    "AsyncLLM", "ChatCompletionRequest", "CompletionRequest", "ErrorResponse",
    "EngineDeadError", "create_error_response", "EmbeddingRequest", "ResponsesRequest",
]

# Tried in order: vLLM 0.32's place, then vLLM 0.14.0's where it differs.
PLACES: dict[Name, tuple[Place, ...]] = {
    "StatLoggerBase": (("vllm.v1.metrics.loggers", "StatLoggerBase"),),
    "make_arg_parser": (("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
                        ("vllm.entrypoints.openai.cli_args", "make_arg_parser")),
    "validate_parsed_serve_args": (
        ("vllm.entrypoints.launchers.cli_args", "validate_parsed_serve_args"),
        ("vllm.entrypoints.openai.cli_args", "validate_parsed_serve_args")),
    "FlexibleArgumentParser": (("vllm.utils.argparse_utils", "FlexibleArgumentParser"),),
    "AsyncEngineArgs": (("vllm.engine.arg_utils", "AsyncEngineArgs"),),
    "init_app_state": (("vllm.entrypoints.launchers.api_server.app_state", "init_app_state"),
                       ("vllm.entrypoints.openai.api_server", "init_app_state")),
    "UsageContext": (("vllm.usage.usage_lib", "UsageContext"),),
    "AsyncLLM": (("vllm.v1.engine.async_llm", "AsyncLLM"),),
    "ChatCompletionRequest": (
        ("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
        ("vllm.entrypoints.openai.protocol", "ChatCompletionRequest")),
    "CompletionRequest": (
        ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
        ("vllm.entrypoints.openai.protocol", "CompletionRequest")),
    "ErrorResponse": (("vllm.entrypoints.serve.engine.protocol", "ErrorResponse"),
                      ("vllm.entrypoints.openai.protocol", "ErrorResponse")),
    "EngineDeadError": (("vllm.v1.engine.exceptions", "EngineDeadError"),),
    # A union of pydantic models (validated with a TypeAdapter), in the same place in both.
    "EmbeddingRequest": (("vllm.entrypoints.pooling.embed.protocol", "EmbeddingRequest"),),
    "ResponsesRequest": (("vllm.entrypoints.openai.responses.protocol", "ResponsesRequest"),
                         ("vllm.entrypoints.openai.protocol", "ResponsesRequest")),
    # 0.32: a function; 0.14.0: a method of every serving object (see error_response).
    "create_error_response": (
        ("vllm.entrypoints.serve.exception_handling.error_response", "create_error_response"),
        ("vllm.entrypoints.openai.serving_engine", "OpenAIServing.create_error_response")),
}

# Engine flags the workers pass (shared/engine_args.py) that a vLLM may lack and
# the workers can run without: flag -> (values it takes, what is lost without it).
# Any other flag the parser does not know still fails, naming the flag.
OPTIONAL_FLAGS: dict[str, tuple[int, str]] = {
    "--tool-strict-level": (1, "tool calls are not constrained to the tools' schemas for "
                               "tool_choice `auto` (vLLM 0.32's structural tags)"),
}


# The ``state`` attributes init_app_state sets to the chat and completion serving
# objects: the same names in 0.14.0 (its api_server) and 0.32 (init_generate_state).
SERVING_STATE = ("openai_serving_chat", "openai_serving_completion")
# The embeddings serving object: 0.32 (init_pooling_state) calls it serving_embedding,
# 0.14.0 openai_serving_embedding. The responses one is openai_serving_responses in both.
EMBEDDING_STATE = ("serving_embedding", "openai_serving_embedding")
RESPONSES_STATE = "openai_serving_responses"


def _lookup(place: Place) -> Any:
    module, attr = place
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _first(places: Sequence[Place]) -> tuple[Place, Any]:
    tried = []
    for place in places:
        try:
            return place, _lookup(place)
        except ImportError as exc:  # no such module (or one of its imports failed)
            tried.append(f"{place[0]}.{place[1]} ({exc})")
        except AttributeError:
            tried.append(f"{place[0]}.{place[1]} (not defined there)")
    raise ImportError("none of " + "; ".join(tried))


def first_of(*places: Place) -> Any:
    """The object at the first of ``places`` that exists; ImportError names every try."""
    return _first(places)[1]


@cache
def resolve(name: Name) -> Any:
    """The running vLLM's object for ``name`` (cached: the lookups import modules)."""
    return first_of(*PLACES[name])


def where(name: Name) -> str:
    """``module.attribute`` that ``name`` resolves to in the running vLLM."""
    module, attr = _first(PLACES[name])[0]
    return f"{module}.{attr}"


def check() -> list[str]:
    """Every name the workers need that the running vLLM lacks, with the places tried."""
    missing = []
    for name in PLACES:
        try:
            resolve(name)
        except ImportError as exc:
            missing.append(f"{name}: {exc}")
    return missing


def _parameters(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


def init_app_state_takes_tasks(parameters: Sequence[str]) -> bool:
    """0.32's ``init_app_state`` takes the engine's supported tasks (and warns without
    them); 0.14.0's has only ``(engine_client, state, args)`` and asks the engine."""
    return "supported_tasks" in parameters


def error_response_is_method(parameters: Sequence[str]) -> bool:
    """0.14.0's ``create_error_response`` is a method of ``OpenAIServing`` (the serving
    objects' base); 0.32's is a module-level function."""
    return bool(parameters) and parameters[0] == "self"


def serve_parser(prog: str) -> Any:
    """vLLM's ``vllm serve`` argument parser (the same in 0.14.0 and 0.32)."""
    return resolve("make_arg_parser")(resolve("FlexibleArgumentParser")(prog=prog))


def known_flags(parser: argparse.ArgumentParser) -> set[str]:
    # argparse keeps every option string here (no public accessor); it has for decades.
    return set(parser._option_string_actions)


def drop_unknown_optional_flags(argv: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """``argv`` without the OPTIONAL_FLAGS this parser lacks; and those dropped."""
    kept: list[str] = []
    dropped: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        flag = arg.split("=", 1)[0]
        if flag in OPTIONAL_FLAGS and flag not in known:
            dropped.append(flag)
            skip = 0 if "=" in arg else OPTIONAL_FLAGS[flag][0]
            continue
        kept.append(arg)
    return kept, dropped


def parse_serve_args(argv: list[str], prog: str) -> tuple[argparse.Namespace, list[str]]:
    """Parse and validate ``argv`` as ``vllm serve`` does; also the flags dropped as
    unknown to this vLLM (OPTIONAL_FLAGS only). Raises SystemExit on a bad flag."""
    parser = serve_parser(prog)
    argv, dropped = drop_unknown_optional_flags(argv, known_flags(parser))
    args: argparse.Namespace = parser.parse_args(argv)
    resolve("validate_parsed_serve_args")(args)
    return args, dropped


@dataclass(frozen=True)
class Serving:
    """vLLM's serving objects for one engine; None where the engine's tasks lack them
    (a pooling engine has no chat, a generating one no embeddings)."""

    chat: Any
    completion: Any
    embedding: Any
    responses: Any


async def init_serving(client: Any, args: argparse.Namespace) -> Serving:
    """vLLM's own serving objects for ``client``, wired by its ``init_app_state`` as
    ``vllm serve`` wires them."""
    from starlette.datastructures import State

    init_app_state = resolve("init_app_state")
    state = State()
    if init_app_state_takes_tasks(_parameters(init_app_state)):
        tasks = await client.get_supported_tasks()
        await init_app_state(client, state, args, tasks)
    else:
        await init_app_state(client, state, args)
    chat, completion = SERVING_STATE
    embedding = next((v for name in EMBEDDING_STATE
                      if (v := getattr(state, name, None)) is not None), None)
    return Serving(chat=getattr(state, chat, None), completion=getattr(state, completion, None),
                   embedding=embedding, responses=getattr(state, RESPONSES_STATE, None))


def error_response(exc: Exception, serving: Any) -> Any:
    """vLLM's own mapping of ``exc`` to an ``ErrorResponse`` (status, message, param).

    ``serving`` (a chat or completion serving object) is used only where the
    mapping is its method (0.14.0). The mappings differ in detail: 0.14.0 makes
    any RuntimeError a 400, 0.32 a 500 unless it is one of vLLM's own errors.
    """
    create = resolve("create_error_response")
    if error_response_is_method(_parameters(create)):
        return create(serving, exc)
    return create(exc)
