"""The worker's side of embeddings and the Responses API that needs no engine: the engine
request ids an abort names (workers/engine/handler.py), and the Responses API's flat function
tools (workers/engine/tool_calls.py)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from shared import protocol as p
from workers.engine.handler import engine_request_ids
from workers.engine.tool_calls import Call, function_of, tools_of


def request(endpoint: p.Endpoint, rid: str = "abc") -> p.Request:
    return p.Request(request_id=rid, endpoint=endpoint, body=b"{}", stream=False)


# ----- engine_request_ids ------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ids"), [
    ("one text", ["embd-abc-0"]),
    (["a", "b", "c"], ["embd-abc-0", "embd-abc-1", "embd-abc-2"]),
    ([5, 6, 7], ["embd-abc-0"]),  # one list of token ids is one input
    ([[5, 6], [7]], ["embd-abc-0", "embd-abc-1"]),
])
def test_an_embeddings_request_has_one_engine_request_per_input(value: Any,
                                                                ids: list[str]) -> None:
    body = SimpleNamespace(input=value, request_id="abc")
    assert engine_request_ids(request(p.Endpoint.EMBEDDINGS), body) == ids


def test_an_embeddings_body_without_input_is_one_engine_request() -> None:
    # vLLM's chat-shaped embeddings request has messages, not input
    body = SimpleNamespace(messages=[{"role": "user", "content": "x"}])
    assert engine_request_ids(request(p.Endpoint.EMBEDDINGS, "r9"), body) == ["embd-r9-0"]


def test_a_responses_abort_names_the_engine_request_vllm_started() -> None:
    """vLLM's Responses serving generates under f'{request_id}_{sub_request}'
    (_generate_with_builtin_tools), and AsyncLLM.abort matches ids exactly."""
    body = SimpleNamespace(request_id="resp_abc", input="hi")
    assert engine_request_ids(request(p.Endpoint.RESPONSES), body) == ["resp_abc_0"]


def test_chat_and_completion_ids_are_unchanged() -> None:
    assert engine_request_ids(request(p.Endpoint.CHAT), SimpleNamespace()) == ["chatcmpl-abc"]
    assert engine_request_ids(request(p.Endpoint.COMPLETION),
                              SimpleNamespace(prompt=["x", "y"])) == ["cmpl-abc-0",
                                                                     "cmpl-abc-1"]


# ----- ...as the installed vLLM (0.32) names them --------------------------------------------
# The ids above are vLLM's, not ours: if vLLM renames them, an abort names nothing and the
# engine keeps computing for a client that left. These read the installed serving code.


def test_vllm_names_an_embedding_embd_dash_id_dash_input_index() -> None:
    from vllm.entrypoints.pooling.base.serving import PoolingBaseServing
    from vllm.entrypoints.pooling.embed.serving import ServingEmbedding
    from vllm.entrypoints.serve.engine.serving import BaseServing

    assert ServingEmbedding.request_id_prefix == "embd"
    assert issubclass(ServingEmbedding, PoolingBaseServing)
    # the request's id is `<prefix>-<body.request_id>` (the handler passes no raw request,
    # so no X-Request-Id header replaces it)...
    assert 'f"{self.request_id_prefix}-{base_request_id}"' in inspect.getsource(
        PoolingBaseServing._init_ctx)
    assert BaseServing._base_request_id(None, "abc") == "abc"
    # ...and each input is engine request `<that>-<index>`
    source = inspect.getsource(PoolingBaseServing._prepare_generators)
    assert 'f"{ctx.request_id}-{i}"' in source


def test_vllm_runs_a_response_as_sub_request_zero() -> None:
    from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses

    source = inspect.getsource(OpenAIServingResponses._generate_with_builtin_tools)
    assert 'f"{request_id}_{sub_request}"' in source
    assert "sub_request = 0" in source


# ----- function tools in both shapes -------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"area": {"type": "string"}}, "required": ["area"]}
CHAT_TOOL = {"type": "function", "function": {"name": "turn_on", "parameters": SCHEMA}}
FLAT_TOOL = {"type": "function", "name": "turn_off", "parameters": SCHEMA}


def test_function_of_takes_chats_nested_and_the_responses_flat_tool() -> None:
    assert function_of(CHAT_TOOL) is CHAT_TOOL["function"]
    assert function_of(FLAT_TOOL) is FLAT_TOOL
    assert function_of({"type": "web_search"}) is None
    assert function_of({"type": "file_search", "name": "docs"}) is None
    # vLLM's pydantic objects, by attribute
    fn = SimpleNamespace(name="turn_on", parameters=SCHEMA)
    assert function_of(SimpleNamespace(type="function", function=fn)) is fn
    flat = SimpleNamespace(type="function", name="turn_off", parameters=SCHEMA)
    assert function_of(flat) is flat
    assert function_of(SimpleNamespace(type="mcp")) is None


def test_tools_of_takes_flat_function_tools_and_skips_the_others() -> None:
    tools = tools_of([CHAT_TOOL, FLAT_TOOL, {"type": "web_search"},
                      SimpleNamespace(type="function", name="pydantic_flat", parameters=None)])
    assert tools.call({"name": "turn_off", "arguments": {"area": "kitchen"}}) == \
        Call(name="turn_off", arguments={"area": "kitchen"})
    assert tools.call({"name": "turn_on", "arguments": '{"area": "office"}'}) == \
        Call(name="turn_on", arguments={"area": "office"})
    assert tools.call({"name": "pydantic_flat", "arguments": {"any": 1}}) == \
        Call(name="pydantic_flat", arguments={"any": 1})
    # the flat tool's schema is enforced; a tool that is not a function is not callable
    assert tools.call({"name": "turn_off", "arguments": {}}) is None
    assert tools.call({"name": "web_search", "arguments": {}}) is None


def test_a_flat_tool_without_a_name_is_skipped() -> None:
    tools = tools_of([{"type": "function", "parameters": SCHEMA}])
    assert tools.call({"name": "None", "arguments": {}}) is None
