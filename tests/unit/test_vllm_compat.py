"""workers/engine/vllm_compat.py: every vLLM name the workers use, on vLLM 0.32 and 0.14.0.

vLLM 0.32 is installed (requirements/cpu.lock): its names are imported for real.
vLLM 0.14.0 (the Jetson base image's) is not: its fallbacks and the signatures
the bridges depend on are checked against a recording of the 0.14.0 wheel's
sources, tests/unit/data/vllm_0_14_api.json (scripts/record_vllm_api.py).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import json
import textwrap
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import msgspec
import pytest

from shared import config as cfgmod
from shared.engine_args import engine_argv
from workers.engine import vllm_compat
from workers.engine.engine import EngineStats

REPO = Path(__file__).resolve().parents[2]
RECORDING = Path(__file__).parent / "data" / "vllm_0_14_api.json"


@cache
def v014() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDING.read_text())
    return data


def in_014(place: vllm_compat.Place) -> bool:
    """Would ``importlib.import_module(module)`` + getattr find ``place`` in 0.14.0?"""
    module, attr = place
    names = v014()["modules"].get(module)
    if names is None:
        return False
    first, *rest = attr.split(".")
    if first not in names:
        return False
    if rest:
        cls = v014()["classes"].get(f"{module}:{first}")
        return cls is not None and rest == [m for m in rest if m in cls["members"]]
    return True


def params_014(spec: str) -> list[str]:
    params: list[str] | None = v014()["signatures"][spec]
    assert params is not None, f"{spec} was not found in the 0.14.0 sources"
    return params


def names_of(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


# --- the recording itself ------------------------------------------------------


def test_the_recording_is_of_vllm_0_14_0_and_covers_every_compat_module() -> None:
    assert v014()["vllm_version"] == "0.14.0"
    assert v014()["source"].startswith("vllm-0.14.0-")
    recorded = set(v014()["modules"])
    assert {m for places in vllm_compat.PLACES.values() for m, _ in places} <= recorded, \
        "a new place in PLACES: rerun scripts/record_vllm_api.py (see its docstring)"


def test_every_name_has_places() -> None:
    assert set(vllm_compat.PLACES) == set(get_args(vllm_compat.Name))
    assert all(vllm_compat.PLACES.values())


# --- vLLM 0.32, installed: real imports ---------------------------------------


def test_every_name_resolves_on_the_installed_vllm_at_its_first_place() -> None:
    assert vllm_compat.check() == []
    for name, places in vllm_compat.PLACES.items():
        # 0.32 is what the workers are written for: never a fallback here.
        assert vllm_compat.where(name) == ".".join(places[0]), name
        assert vllm_compat.resolve(name) is vllm_compat.first_of(*places)


def test_the_bridges_take_the_032_path_on_the_installed_vllm() -> None:
    init_app_state = vllm_compat.resolve("init_app_state")
    assert vllm_compat.init_app_state_takes_tasks(names_of(init_app_state))
    create = vllm_compat.resolve("create_error_response")
    assert not vllm_compat.error_response_is_method(names_of(create))
    err = vllm_compat.error_response(ValueError("bad value"), serving=None)
    assert isinstance(err, vllm_compat.resolve("ErrorResponse"))
    assert (err.error.code, err.error.message) == (400, "bad value")
    assert vllm_compat.error_response(KeyError("x"), serving=None).error.code == 500


def test_the_installed_parser_knows_every_flag_the_profiles_pass() -> None:
    known = vllm_compat.known_flags(vllm_compat.serve_parser("t"))
    assert set(vllm_compat.OPTIONAL_FLAGS) <= known
    cfg = cfgmod.load(profile="cpu")
    argv = engine_argv(cfg, cfg.models[0], accelerator=False)
    args, dropped = vllm_compat.parse_serve_args(argv, prog="t")
    assert dropped == [] and args.served_model_name == [cfg.models[0].name]


def test_first_of_names_every_place_it_tried() -> None:
    assert vllm_compat.first_of(("no_such_mod_zoe", "x"), ("json", "loads")) is json.loads
    assert vllm_compat.first_of(("argparse", "ArgumentParser.parse_args")) is \
        argparse.ArgumentParser.parse_args
    with pytest.raises(ImportError) as caught:
        vllm_compat.first_of(("no_such_mod_zoe", "x"), ("json", "nope"))
    assert "no_such_mod_zoe.x (No module named 'no_such_mod_zoe')" in str(caught.value)
    assert "json.nope (not defined there)" in str(caught.value)


# --- vLLM 0.14.0, recorded: the fallbacks and what the bridges assume ----------


# Names whose fallback 0.14.0 does not need: 0.32's place already holds them there
# (vllm.entrypoints.pooling.embed.protocol exists in 0.14.0). Harmless, as the first place
# is tried first; kept exact below, so a name leaves this set when its fallback is dropped.
@pytest.mark.parametrize("name", list(vllm_compat.PLACES))
def test_every_name_resolves_in_vllm_0_14(name: vllm_compat.Name) -> None:
    places = vllm_compat.PLACES[name]
    assert any(in_014(place) for place in places), \
        f"{name}: none of {places} exists in vLLM 0.14.0"
    # A fallback is listed only where 0.14.0 needs it (0.32's place is absent there).
    assert in_014(places[0]) == (len(places) == 1), name


def test_014_needs_the_fallbacks_for_the_moved_names() -> None:
    moved = {name for name, places in vllm_compat.PLACES.items() if not in_014(places[0])}
    assert moved == {"make_arg_parser", "validate_parsed_serve_args", "init_app_state",
                     "ChatCompletionRequest", "CompletionRequest", "ErrorResponse",
                     "create_error_response", "ResponsesRequest"}
    # 0.14.0 kept the Responses request with the other OpenAI models; the embeddings one
    # was already where 0.32 keeps it (and serving_engine imported it from there).
    assert vllm_compat.PLACES["ResponsesRequest"][1] == (
        "vllm.entrypoints.openai.protocol", "ResponsesRequest")
    assert in_014(vllm_compat.PLACES["EmbeddingRequest"][0])
    assert not in_014(vllm_compat.PLACES["ResponsesRequest"][0])


def test_our_stat_logger_matches_014s_stat_logger_base() -> None:
    logger = EngineStats("m")(vllm_config=None)
    ours = type(logger)
    base = v014()["classes"]["vllm.v1.metrics.loggers:StatLoggerBase"]
    # vLLM calls record(scheduler_stats, iteration_stats, mm_cache_stats=, engine_idx=)
    assert names_of(ours.record) == params_014("vllm.v1.metrics.loggers:StatLoggerBase.record")
    assert names_of(ours.__init__) == \
        params_014("vllm.v1.metrics.loggers:StatLoggerBase.__init__")
    assert set(base["abstract"]) <= set(vars(ours)), "an abstract method we do not implement"


def _engine_call_keywords(method: str) -> set[str]:
    tree = ast.parse((REPO / "workers" / "engine" / "engine.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == method:
            return {k.arg for k in node.keywords if k.arg}
    raise AssertionError(f"engine.py no longer calls {method}")


def test_the_engine_is_built_with_keywords_014_accepts() -> None:
    keywords = _engine_call_keywords("from_vllm_config")
    assert keywords >= {"stat_loggers", "enable_log_requests", "disable_log_stats"}
    assert keywords <= set(params_014("vllm.v1.engine.async_llm:AsyncLLM.from_vllm_config"))
    assert _engine_call_keywords("create_engine_config") <= \
        set(params_014("vllm.engine.arg_utils:AsyncEngineArgs.create_engine_config"))
    assert params_014("vllm.engine.arg_utils:AsyncEngineArgs.from_cli_args") == ["cls", "args"]
    # what the worker and handler call on the client
    assert params_014("vllm.v1.engine.async_llm:AsyncLLM.abort")[:2] == ["self", "request_id"]
    for method in ("reset_mm_cache", "get_supported_tasks", "shutdown"):
        assert params_014(f"vllm.v1.engine.async_llm:AsyncLLM.{method}") == ["self"]
    assert "model_config" in v014()["classes"]["vllm.v1.engine.async_llm:AsyncLLM"]["members"]
    assert "OPENAI_API_SERVER" in v014()["classes"]["vllm.usage.usage_lib:UsageContext"][
        "members"]


def test_014s_init_app_state_is_called_without_tasks_and_sets_the_same_state() -> None:
    spec = "vllm.entrypoints.openai.api_server:init_app_state"
    params = params_014(spec)
    assert params == ["engine_client", "state", "args"]
    assert not vllm_compat.init_app_state_takes_tasks(params)
    state = set(v014()["state_attributes"][spec])
    assert set(vllm_compat.SERVING_STATE) <= state
    # Embeddings under 0.14.0's name (not 0.32's), and the Responses serving object.
    new_name, old_name = vllm_compat.EMBEDDING_STATE
    assert old_name in state and new_name not in state
    assert vllm_compat.RESPONSES_STATE in state


def _state_stores(func: Any) -> set[str]:
    """``state.<name> = ...`` in the source of ``func`` (an installed vLLM function)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id == "state"}


def test_032s_state_functions_set_the_names_init_serving_reads() -> None:
    from vllm.entrypoints.generate.api_router import init_generate_state
    from vllm.entrypoints.pooling.factories import init_pooling_state

    generate, pooling = _state_stores(init_generate_state), _state_stores(init_pooling_state)
    assert set(vllm_compat.SERVING_STATE) <= generate
    assert vllm_compat.RESPONSES_STATE in generate
    new_name, old_name = vllm_compat.EMBEDDING_STATE
    assert new_name in pooling and old_name not in pooling | generate


def test_init_serving_passes_tasks_only_where_init_app_state_takes_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    async def new(engine_client: Any, state: Any, args: Any,
                  supported_tasks: Any = None) -> None:
        calls.append((engine_client, args, supported_tasks))
        state.openai_serving_chat, state.openai_serving_completion = "chat", "completion"

    async def old(engine_client: Any, state: Any, args: Any) -> None:
        calls.append((engine_client, args))
        state.openai_serving_chat, state.openai_serving_completion = "chat", "completion"

    class Client:
        async def get_supported_tasks(self) -> tuple[str, ...]:
            return ("generate",)

    client, args = Client(), argparse.Namespace()
    for fake in (new, old):
        monkeypatch.setattr(vllm_compat, "resolve", lambda name, f=fake: f)
        # A state without embeddings or responses objects: those are None.
        assert asyncio.run(vllm_compat.init_serving(client, args)) == vllm_compat.Serving(
            chat="chat", completion="completion", embedding=None, responses=None)
    assert calls == [(client, args, ("generate",)), (client, args)]


@pytest.mark.parametrize("attr", vllm_compat.EMBEDDING_STATE)
def test_init_serving_finds_the_embeddings_object_under_either_vllms_name(
        monkeypatch: pytest.MonkeyPatch, attr: str) -> None:
    async def pooling(engine_client: Any, state: Any, args: Any) -> None:
        # A pooling engine: 0.14.0 sets the generating objects to None, 0.32 not at all.
        state.openai_serving_chat = None
        if attr == "openai_serving_embedding":
            state.serving_embedding = None  # the other name, set but empty: skipped
        setattr(state, attr, "embed")

    monkeypatch.setattr(vllm_compat, "resolve", lambda name: pooling)
    assert asyncio.run(vllm_compat.init_serving(object(), argparse.Namespace())) == \
        vllm_compat.Serving(chat=None, completion=None, embedding="embed", responses=None)


def test_init_serving_finds_the_responses_object(monkeypatch: pytest.MonkeyPatch) -> None:
    async def generate(engine_client: Any, state: Any, args: Any) -> None:
        state.openai_serving_chat, state.openai_serving_completion = "chat", "completion"
        state.openai_serving_responses = "responses"
        state.serving_embedding = None  # 0.32 sets it to None for a generating model

    monkeypatch.setattr(vllm_compat, "resolve", lambda name: generate)
    serving = asyncio.run(vllm_compat.init_serving(object(), argparse.Namespace()))
    assert (serving.responses, serving.embedding) == ("responses", None)


def test_014s_error_mapping_is_a_method_of_the_serving_objects() -> None:
    spec = "vllm.entrypoints.openai.serving_engine:OpenAIServing.create_error_response"
    params = params_014(spec)
    assert vllm_compat.error_response_is_method(params) and params[1] == "message"
    classes = v014()["classes"]
    for cls in ("serving_chat:OpenAIServingChat", "serving_completion:OpenAIServingCompletion"):
        assert classes[f"vllm.entrypoints.openai.{cls}"]["bases"] == ["OpenAIServing"]


def test_error_response_calls_a_method_with_the_serving_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Serving:  # 0.14.0's shape: create_error_response(self, message, ...)
        def create_error_response(self, message: Exception, err_type: str = "") -> Any:
            return ("method", self, message)

    serving, exc = Serving(), ValueError("x")
    monkeypatch.setattr(vllm_compat, "resolve", lambda name: Serving.create_error_response)
    assert vllm_compat.error_response(exc, serving) == ("method", serving, exc)
    monkeypatch.setattr(vllm_compat, "resolve", lambda name: lambda message: ("fn", message))
    assert vllm_compat.error_response(exc, serving) == ("fn", exc)


def test_the_serving_calls_and_bodies_have_014s_shape() -> None:
    for spec in ("serving_chat:OpenAIServingChat.create_chat_completion",
                 "serving_completion:OpenAIServingCompletion.create_completion"):
        # handler.py calls serving.create_*(body, None): None is raw_request
        assert params_014(f"vllm.entrypoints.openai.{spec}") == \
            ["self", "request", "raw_request"]
    classes = v014()["classes"]
    members = {name: set(classes[f"vllm.entrypoints.openai.protocol:{name}"]["members"])
               for name in ("ChatCompletionRequest", "CompletionRequest", "ErrorInfo",
                            "ErrorResponse")}
    assert {"request_id", "stream"} <= members["ChatCompletionRequest"]
    assert {"request_id", "stream", "echo", "logprobs", "n", "prompt"} <= \
        members["CompletionRequest"]
    assert members["ErrorResponse"] == {"error"}
    assert {"message", "type", "param", "code"} <= members["ErrorInfo"]


class _Recorder:
    """A serving object whose method (or ``__call__``) takes the arguments a signature
    allows, binding them as that vLLM would; what it was called with is kept."""

    def __init__(self, member: str, signature: inspect.Signature) -> None:
        self.member, self.signature = member, signature
        self.bound: dict[str, Any] | None = None

    def _take(self, *args: Any, **kwargs: Any) -> str:
        # raises TypeError where the worker's call does not fit the signature
        bound = self.signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.bound = {k: v for k, v in bound.arguments.items() if k != "self"}
        return "answer"

    def __getattr__(self, name: str) -> Any:
        if name == self.member:
            async def method(*args: Any, **kwargs: Any) -> str:
                return self._take(*args, **kwargs)
            return method
        raise AttributeError(name)

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        assert self.member == "__call__", f"called, but vLLM's object has {self.member}"
        return self._take(*args, **kwargs)


def _signature_014(spec: str) -> inspect.Signature:
    """A signature with 0.14.0's recorded parameter names (all positional-or-keyword,
    ``raw_request`` defaulting to None as it does there)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([
        inspect.Parameter(n, kind, **({"default": None} if n == "raw_request" else {}))
        for n in params_014(spec)])


def _handler_call(endpoint: Any, serving: Any, body: Any) -> Any:
    from workers.engine.handler import Handler

    engine: Any = SimpleNamespace()  # call() uses no engine
    handler = Handler(engine, send=lambda msg: pytest.fail("nothing is sent"))
    return asyncio.run(handler.call(endpoint, serving, body))


@pytest.mark.parametrize(("endpoint", "spec", "member"), [
    ("CHAT", "vllm.entrypoints.openai.serving_chat:OpenAIServingChat.create_chat_completion",
     "create_chat_completion"),
    ("COMPLETION", "vllm.entrypoints.openai.serving_completion:OpenAIServingCompletion."
                   "create_completion", "create_completion"),
    ("EMBEDDINGS", "vllm.entrypoints.pooling.embed.serving:OpenAIServingEmbedding."
                   "create_embedding", "create_embedding"),
    ("RESPONSES", "vllm.entrypoints.openai.serving_responses:OpenAIServingResponses."
                  "create_responses", "create_responses"),
])
def test_the_handler_calls_014s_serving_methods_as_they_are_recorded(
        endpoint: str, spec: str, member: str) -> None:
    from shared import protocol as p

    assert params_014(spec) == ["self", "request", "raw_request"]
    module, qualname = spec.split(":")
    assert qualname.split(".")[1] in v014()["classes"][f"{module}:{qualname.split('.')[0]}"][
        "members"]
    serving, body = _Recorder(member, _signature_014(spec)), object()
    assert _handler_call(p.Endpoint[endpoint], serving, body) == "answer"
    assert serving.bound == {"request": body, "raw_request": None}


def test_014s_embedding_and_responses_serving_map_errors_as_openai_serving_does() -> None:
    """The handler maps an exception with the serving object's create_error_response
    (a method of OpenAIServing in 0.14.0): the pooling and responses objects are ones."""
    classes = v014()["classes"]
    embed = "vllm.entrypoints.pooling.embed.serving"
    assert classes[f"{embed}:OpenAIServingEmbedding"]["bases"] == ["EmbeddingMixin"]
    assert classes[f"{embed}:EmbeddingMixin"]["bases"] == ["OpenAIServing"]
    assert "OpenAIServing" in v014()["modules"][embed]  # imported from serving_engine
    assert classes["vllm.entrypoints.openai.serving_responses:OpenAIServingResponses"][
        "bases"] == ["OpenAIServing"]


def test_014s_request_bodies_have_the_fields_the_worker_and_gateway_set() -> None:
    classes = v014()["classes"]
    embedding = set(classes["vllm.entrypoints.pooling.embed.protocol:"
                            "EmbeddingCompletionRequest"]["members"])
    # handler.parse sets request_id; ollama_body sends truncate_prompt_tokens (to a vLLM
    # model); an OpenAI request's dimensions pass through
    assert {"request_id", "input", "truncate_prompt_tokens", "dimensions",
            "encoding_format"} <= embedding
    responses = set(classes["vllm.entrypoints.openai.protocol:ResponsesRequest"]["members"])
    assert {"request_id", "input", "stream", "store", "previous_response_id",
            "background"} <= responses
    assert "EmbeddingRequest" in v014()["modules"]["vllm.entrypoints.pooling.embed.protocol"]


def test_the_handler_calls_032s_embedding_and_responses_serving_as_they_are() -> None:
    from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
    from vllm.entrypoints.pooling.embed.serving import ServingEmbedding

    from shared import protocol as p

    # 0.32's pooling serving objects are called; they have no create_embedding.
    assert not hasattr(ServingEmbedding, "create_embedding")
    serving, body = _Recorder("__call__", inspect.signature(ServingEmbedding.__call__)), object()
    assert _handler_call(p.Endpoint.EMBEDDINGS, serving, body) == "answer"
    assert serving.bound == {"request": body, "raw_request": None}
    responses = _Recorder("create_responses",
                          inspect.signature(OpenAIServingResponses.create_responses))
    assert _handler_call(p.Endpoint.RESPONSES, responses, body) == "answer"
    assert responses.bound == {"request": body, "raw_request": None}


@pytest.mark.parametrize("profile", ["jetson", "gpu", "cpu"])
def test_014s_parser_knows_every_flag_the_profiles_pass_but_the_optional_ones(
        profile: str) -> None:
    """Statically: 0.14.0's literal add_argument flags and its frontend dataclass's
    fields (each a --flag; booleans also --no-flag)."""
    known = set(v014()["serve_options"])
    cfg = cfgmod.load(profile=profile)
    for model in cfg.models:
        argv = engine_argv(cfg, model, accelerator=profile != "cpu")
        kept, dropped = vllm_compat.drop_unknown_optional_flags(argv, known)
        flags = [a.split("=", 1)[0] for a in kept if a.startswith("--")]
        unknown = [f for f in flags if f not in known and
                   "--" + f.removeprefix("--no-") not in known]
        assert unknown == [], f"{profile}/{model.name}: vLLM 0.14.0 lacks {unknown}"
        if model.tool_call_parser:
            assert dropped == ["--tool-strict-level"]
            assert "parameter" not in kept  # its value went with it
        else:
            assert dropped == []


def test_only_optional_flags_unknown_to_the_parser_are_dropped() -> None:
    argv = ["--a", "1", "--tool-strict-level", "parameter", "--b",
            "--tool-strict-level=function", "--zzz", "2"]
    assert vllm_compat.drop_unknown_optional_flags(argv, {"--a", "--b"}) == \
        (["--a", "1", "--b", "--zzz", "2"], ["--tool-strict-level", "--tool-strict-level"])
    assert vllm_compat.drop_unknown_optional_flags(argv, {"--tool-strict-level"}) == \
        (argv, [])


def test_the_workers_import_vllm_only_through_the_compat_layer() -> None:
    from deploy import check_image

    assert check_image.direct_vllm_imports() == []
    for path in (REPO / "workers").glob("*.py"):
        if path.name != "vllm_compat.py":
            plain = [a.name for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Import) for a in node.names]
            assert not [n for n in plain if n.split(".")[0] == "vllm"], path.name


def test_a_stat_logger_namespace_works_with_014s_record_calls() -> None:
    """vLLM 0.14.0 calls record(sched, iter, mm_cache_stats=..., engine_idx=...)."""
    seen: list[int] = []
    stats = EngineStats("m", on_change=lambda: seen.append(1))
    logger = stats(vllm_config=None, engine_index=0)
    sched = SimpleNamespace(num_running_reqs=1, num_waiting_reqs=0, kv_cache_usage=0.5,
                            prefix_cache_stats=SimpleNamespace(queries=2, hits=1))
    logger.record(sched, SimpleNamespace(num_prompt_tokens=3, num_generation_tokens=1),
                  mm_cache_stats=None, engine_idx=0)
    assert (stats.running, stats.prompt_tokens, seen) == (1, 3, [1])


def test_a_models_block_size_reaches_vllms_cache_config_and_unset_leaves_vllms_own() -> None:
    cfg = cfgmod.load(profile="cpu")
    model = cfg.models[0]
    sized, _ = vllm_compat.parse_serve_args(
        engine_argv(cfg, msgspec.structs.replace(model, block_size=64), accelerator=False),
        prog="t")
    unset, _ = vllm_compat.parse_serve_args(
        engine_argv(cfg, msgspec.structs.replace(model, block_size=None), accelerator=False),
        prog="t")
    assert (sized.block_size, unset.block_size) == (64, None)
