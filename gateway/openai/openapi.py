"""A hand-written OpenAPI 3.0 description of the gateway's OpenAI-shaped surface.

Served as ``GET /openapi.json`` so clients and fuzzers (tests/e2e/test_fuzz.py
runs schemathesis against it) know what the server accepts and answers. It is
static on purpose: the gateway passes request bodies through to vLLM, so no
schema of ours validates them; this document says what the server promises.
It covers the parameters we route on and cap, not every vLLM extension (extra
fields are passed through to vLLM, which validates them).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


_BUSY = {
    "description": "server busy (queue full or queue wait exceeded) or model unavailable",
    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                                "description": "seconds to wait before retrying"}},
    "content": {_JSON: {"schema": _ref("Error")}},
}

_ERRORS = {
    "400": _error("invalid request (validation by the gateway or by vLLM)"),
    "401": _error("missing or invalid API key (when keys are configured)"),
    "404": _error("unknown model"),
    "408": _error("the request body did not arrive within server.body_timeout_s"),
    "413": _error("request body larger than server.max_body_bytes"),
    "503": _BUSY,
}

_SAMPLING: dict[str, Any] = {
    "model": {"type": "string", "description": "a model name or alias; absent or "
              "\"auto\" lets the router choose"},
    "max_tokens": {"type": "integer", "minimum": 1, "nullable": True},
    "max_completion_tokens": {"type": "integer", "minimum": 1, "nullable": True},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True},
    "n": {"type": "integer", "minimum": 1, "maximum": 8},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "stop": {"oneOf": [{"type": "string"},
                       {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "seed": {"type": "integer"},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "user": {"type": "string"},
    "ignore_eos": {"type": "boolean", "description": "vLLM extension"},
}

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"nullable": True, "oneOf": [
            {"type": "string"},
            {"type": "array", "items": _ref("ContentPart")}]},
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
    },
}

_CONTENT_PART = {"oneOf": [
    {"type": "object", "required": ["type", "text"], "properties": {
        "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}},
    {"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"type": "string", "enum": ["image_url"]},
        "image_url": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "description": "a data: URL (remote URLs only for "
                    "hosts in server.image_url_allowlist)"}}}}},
]}

_TOOL = {
    "type": "object", "required": ["type", "function"],
    "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "function": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "description": {"type": "string"},
            "parameters": {"type": "object"}}},
    },
}

_CHAT_REQUEST = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        **_SAMPLING,
        "messages": {"type": "array", "minItems": 1, "maxItems": 256, "items": _MESSAGE},
        "tools": {"type": "array", "items": _TOOL},
        "tool_choice": {"oneOf": [
            {"type": "string", "enum": ["none", "auto", "required"]},
            {"type": "object", "required": ["type", "function"], "properties": {
                "type": {"type": "string", "enum": ["function"]},
                "function": {"type": "object", "required": ["name"],
                             "properties": {"name": {"type": "string"}}}}}]},
        "response_format": {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["text", "json_object"]}}},
    },
}

_COMPLETION_REQUEST = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        **_SAMPLING,
        "prompt": {"oneOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}]},
        "echo": {"type": "boolean"},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 5, "nullable": True},
        "suffix": {"type": "string", "nullable": True},
    },
}

_EMBEDDING_REQUEST = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": {"type": "string", "description": "an embedding model (absent: the "
                                                   "profile's embedding model)"},
        "input": {"description": "at most server.max_embedding_inputs (256) inputs",
                  "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "minItems": 1, "maxItems": 256,
             "items": {"type": "string", "minLength": 1}},
            {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
            {"type": "array", "minItems": 1, "maxItems": 256, "items": {
                "type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}}]},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"},
        "truncate_prompt_tokens": {"type": "integer", "minimum": -1,
                                   "description": "vLLM extension: -1 cuts each input to the "
                                                  "model's context"},
    },
}

_EMBEDDINGS = {
    "type": "object", "required": ["object", "data", "model"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]}, "model": {"type": "string"},
        "data": {"type": "array", "items": {
            "type": "object", "required": ["index", "embedding"], "properties": {
                "index": {"type": "integer"}, "object": {"type": "string"},
                "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                        {"type": "string"}]}}}},
        "usage": {"type": "object"},
    },
}

_RESPONSES_ITEM = {"oneOf": [
    {"type": "object", "required": ["role", "content"], "properties": {
        "type": {"type": "string", "enum": ["message"]},
        "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
        "content": {"oneOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1,
             "items": {"type": "object", "required": ["type", "text"],
                                        "properties": {
                                            "type": {"type": "string",
                                                     "enum": ["input_text"]},
                                            "text": {"type": "string"}}}}]}}},
    {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
        "type": {"type": "string", "enum": ["function_call"]},
        "call_id": {"type": "string"}, "name": {"type": "string"},
        "arguments": {"type": "string", "description": "a JSON object, as text"}}},
    {"type": "object", "required": ["type", "call_id", "output"], "properties": {
        "type": {"type": "string", "enum": ["function_call_output"]},
        "call_id": {"type": "string"}, "output": {"type": "string"}}},
]}

_RESPONSES_REQUEST = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1, "items": _RESPONSES_ITEM}]},
        "instructions": {"type": "string"},
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True},
        "stream": {"type": "boolean"},
        "store": {"type": "boolean", "description": "accepted; nothing is stored"},
        "tools": {"type": "array", "items": {
            "type": "object", "required": ["type", "name"], "properties": {
                "type": {"type": "string", "enum": ["function"]},
                "name": {"type": "string"}, "description": {"type": "string"},
                "parameters": {"type": "object"}}}},
        "tool_choice": {"type": "string", "enum": ["none", "auto", "required"]},
    },
}

_RESPONSE = {
    "type": "object", "required": ["id", "object", "output", "status"],
    "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["response"]},
        "status": {"type": "string"}, "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object", "nullable": True},
    },
}

_USAGE = {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"}}}

_CHAT_COMPLETION = {
    "type": "object", "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"}, "model": {"type": "string"},
        "choices": {"type": "array", "items": {
            "type": "object", "required": ["index", "message"], "properties": {
                "index": {"type": "integer"},
                "message": {"type": "object", "required": ["role"], "properties": {
                    "role": {"type": "string"},
                    "content": {"type": "string", "nullable": True}}},
                "finish_reason": {"type": "string", "nullable": True}}}},
        "usage": _USAGE,
    },
}

_COMPLETION = {
    "type": "object", "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"}, "object": {"type": "string", "enum": ["text_completion"]},
        "created": {"type": "integer"}, "model": {"type": "string"},
        "choices": {"type": "array", "items": {
            "type": "object", "required": ["index", "text"], "properties": {
                "index": {"type": "integer"}, "text": {"type": "string"},
                "finish_reason": {"type": "string", "nullable": True}}}},
        "usage": _USAGE,
    },
}

# One server-sent event: `data` is a JSON chunk in the JSON answer's shape, or "[DONE]".
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "properties": {
        "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}}}


def _generation(summary: str, request: str, response: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref(request)}}},
        "responses": {
            "200": {"description": "the answer (a JSON object, or server-sent events when "
                                   "`stream` is true)",
                    "headers": {
                        "x-zoe-model": {"schema": {"type": "string"},
                                        "description": "the model that answered"},
                        "x-zoe-route": {"schema": {"type": "string"},
                                        "description": "why: explicit, alias, image, tools, "
                                                       "keyword:<list>, default or "
                                                       "fallback:<model>"}},
                    "content": {_JSON: {"schema": _ref(response)}, **_SSE}},
            **_ERRORS,
        },
    }}


def _get(summary: str, schema: dict[str, Any], media: str = _JSON,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {media: {"schema": schema}}},
        "401": _error("missing or invalid API key (when keys are configured)"),
        **(extra or {})}}}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "zoe-vllm", "version": "0.1.0",
             "description": "OpenAI-compatible gateway in front of one vLLM worker per model. "
                            "Send `Authorization: Bearer <key>` when API keys are configured "
                            "(every path but /health)."},
    "paths": {
        "/v1/chat/completions": _generation("Chat completion", "ChatCompletionRequest",
                                            "ChatCompletion"),
        "/v1/completions": _generation("Text completion", "CompletionRequest", "Completion"),
        "/v1/embeddings": _generation("Embeddings (an embedding model)", "EmbeddingRequest",
                                      "Embeddings"),
        "/v1/responses": _generation("The Responses API (typed server-sent events when "
                                     "`stream` is true)", "ResponsesRequest", "Response"),
        "/v1/models": _get("The configured models", {
            "type": "object", "required": ["object", "data"], "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {"type": "array", "items": {
                    "type": "object", "required": ["id", "object", "owned_by"], "properties": {
                        "id": {"type": "string"}, "object": {"type": "string"},
                        "owned_by": {"type": "string"},
                        "max_model_len": {"type": "integer"}}}}}}),
        "/health": {"get": {"summary": "Liveness and every worker's state (no key needed)",
                            "responses": {
                                "200": {"description": "the default model is ready",
                                        "content": {_JSON: {"schema": _ref("Health")}}},
                                "503": {"description": "the default model is not ready",
                                        "content": {_JSON: {"schema": _ref("Health")}}}}}},
        "/metrics": _get("Metrics as JSON", {"type": "object"}),
        "/metrics/prometheus": _get("Metrics in Prometheus' text format", {"type": "string"},
                                    media="text/plain"),
        "/openapi.json": _get("This document", {"type": "object"}),
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "object", "required": ["message", "type"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"nullable": True, "oneOf": [{"type": "string"},
                                                     {"type": "integer"}]}}}}},
        "Health": {"type": "object", "required": ["status", "workers"], "properties": {
            "status": {"type": "string", "enum": ["ok", "loading", "degraded", "failed"]},
            "default_model": {"type": "string"}, "uptime_s": {"type": "number"},
            "workers": {"type": "object"}}},
        "ContentPart": _CONTENT_PART,
        "ChatCompletionRequest": _CHAT_REQUEST,
        "CompletionRequest": _COMPLETION_REQUEST,
        "ChatCompletion": _CHAT_COMPLETION,
        "Completion": _COMPLETION,
        "EmbeddingRequest": _EMBEDDING_REQUEST,
        "Embeddings": _EMBEDDINGS,
        "ResponsesRequest": _RESPONSES_REQUEST,
        "Response": _RESPONSE,
    }},
}


async def openapi_json(request: Request) -> Response:
    return JSONResponse(SPEC)
