"""Embeddings and the Responses API on the cpu profile's own models, through the official
``openai`` and ``ollama`` clients, with a real Prometheus scraping the counts.

all-MiniLM-L6-v2 runs in a vLLM pooling worker (provisioned from its PyPI package); its
vectors are checked against the model card's recipe computed here with ``transformers``
directly. The Responses API is served by vLLM's own serving class in the Qwen workers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest

from shared.config import load
from tests.e2e.conftest import (
    Stack,
    prometheus_query,
    running_prometheus,
    running_stack,
    wait_for,
)

pytestmark = pytest.mark.e2e

CHAT, TOOLS, EMBED = "qwen2.5-coder-0.5b-chat", "qwen2.5-coder-1.5b-tools", "all-minilm"
DIMENSIONS = 384
TEXTS = ["cat", "kitten", "car", "Turn off the kitchen lights."]


def light(verb: str) -> dict[str, Any]:
    """A function tool in the Responses API's flat shape."""
    return {"type": "function", "name": f"turn_{verb}_light",
            "description": f"Turn {verb} the lights in an area of the home.",
            "parameters": {"type": "object", "required": ["area"], "properties": {
                "area": {"type": "string", "enum": ["kitchen", "bedroom", "office"]}}}}


LIGHTS = [light("on"), light("off")]

@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("apis"), "cpu",
                       models=[CHAT, TOOLS, EMBED]) as s:
        yield s


@pytest.fixture(scope="module")
def client(qwen: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=qwen.v1, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(qwen: Stack) -> dict[str, np.ndarray]:
    """The model card's recipe, with transformers directly: mean pooling over the attention
    mask, then L2 normalisation, on the weights the worker serves."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    cfg = load(path=qwen.config_path)
    path = Path(cfg.model_path(cfg.model(EMBED)))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    vectors = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return dict(zip(TEXTS, vectors, strict=True))


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----- embeddings through the openai SDK ---------------------------------------------------
def test_one_string_embeds_as_the_model_card_says(client: openai.OpenAI,
                                                  reference: dict[str, np.ndarray]) -> None:
    raw = client.embeddings.with_raw_response.create(model=EMBED, input="cat")
    assert raw.headers["x-zoe-model"] == EMBED
    result = raw.parse()
    assert len(result.data) == 1 and len(result.data[0].embedding) == DIMENSIONS
    assert cosine(result.data[0].embedding, reference["cat"]) >= 0.999
    assert result.usage.prompt_tokens == 3  # [CLS] cat [SEP]


def test_a_batch_keeps_its_order_and_its_meaning(client: openai.OpenAI,
                                                 reference: dict[str, np.ndarray]) -> None:
    result = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == list(range(len(TEXTS)))
    assert [len(v) for v in vectors] == [DIMENSIONS] * len(TEXTS)
    for text, vector in zip(TEXTS, vectors, strict=True):
        assert cosine(vector, reference[text]) >= 0.999, text
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-3, "normalised, as the model card says"
    cat, kitten, car = vectors[:3]
    assert cosine(cat, kitten) > cosine(cat, car)


def test_base64_and_token_ids_give_the_same_vector(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=EMBED, input="cat",
                                      encoding_format="float").data[0].embedding
    r = httpx.post(f"{client.base_url}embeddings", timeout=60, json={
        "model": EMBED, "input": "cat", "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    decoded = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]),
                            dtype=np.float32)
    assert cosine(decoded, floats) >= 0.99999
    # [CLS] cat [SEP] in the model's vocabulary.
    by_ids = client.embeddings.create(model=EMBED, input=[[101, 4937, 102]],
                                      encoding_format="float").data[0].embedding
    assert cosine(by_ids, floats) >= 0.99999


def test_no_model_named_goes_to_the_embedding_model(qwen: Stack) -> None:
    r = httpx.post(f"{qwen.v1}/embeddings", json={"input": "cat"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-model"] == EMBED and r.headers["x-zoe-route"] == "default"


# ----- embeddings through the ollama client -----------------------------------------------
def test_ollama_embed_sync_async_and_legacy_agree(qwen: Stack, client: openai.OpenAI) -> None:
    expected = [d.embedding for d in client.embeddings.create(
        model=EMBED, input=["cat", "car"], encoding_format="float").data]
    sync = ollama.Client(host=qwen.url).embed(model="all-minilm", input=["cat", "car"])
    assert len(sync.embeddings) == 2
    for got, want in zip(sync.embeddings, expected, strict=True):
        assert cosine(got, want) >= 0.99999
    assert sync.prompt_eval_count == 6
    assert sync.total_duration and sync.total_duration > 0
    assert sync.load_duration is not None and 0 <= sync.load_duration <= sync.total_duration

    async def embed_async() -> Any:
        return await ollama.AsyncClient(host=qwen.url).embed(model="all-minilm:latest",
                                                             input="cat")
    one = asyncio.run(embed_async())
    assert len(one.embeddings) == 1 and cosine(one.embeddings[0], expected[0]) >= 0.99999

    legacy = ollama.Client(host=qwen.url).embeddings(model="all-minilm", prompt="cat")
    assert cosine(legacy.embedding, expected[0]) >= 0.99999


def test_ollama_truncates_unless_told_not_to(qwen: Stack) -> None:
    long = "the kitchen light is on " * 80  # about 400 tokens; the context is 256
    c = ollama.Client(host=qwen.url)
    assert len(c.embed(model="all-minilm", input=long).embeddings[0]) == DIMENSIONS
    with pytest.raises(ollama.ResponseError) as err:
        c.embed(model="all-minilm", input=long, truncate=False)
    assert err.value.status_code == 400
    assert "maximum context length is 256" in err.value.error


def test_ollama_lists_and_shows_the_embedding_model(qwen: Stack) -> None:
    c = ollama.Client(host=qwen.url)
    assert "all-minilm:latest" in {m.model for m in c.list().models}
    assert list(c.show("all-minilm").capabilities or []) == ["embedding"]
    assert "completion" in (c.show(CHAT).capabilities or [])
    # No input loads the model and embeds nothing, as Ollama does.
    assert c.embed(model="all-minilm", input=[]).embeddings == []
    assert c.embed(model="all-minilm", input="").embeddings == []


def test_ollama_dimensions_cut_and_normalise_again(qwen: Stack) -> None:
    c = ollama.Client(host=qwen.url)
    whole = np.asarray(c.embed(model="all-minilm", input="cat").embeddings[0])
    cut = np.asarray(c.embed(model="all-minilm", input="cat", dimensions=64).embeddings[0])
    assert cut.shape == (64,) and abs(np.linalg.norm(cut) - 1.0) < 1e-6
    assert cosine(cut, whole[:64]) >= 0.99999


# ----- bad input and the wrong model ------------------------------------------------------
@pytest.mark.parametrize(("body", "needle"), [
    ({"model": EMBED}, "`input` is required"),
    ({"model": EMBED, "input": []}, "`input` must be"),
    ({"model": EMBED, "input": 7}, "`input` must be"),
    ({"model": EMBED, "input": ["ok", 3]}, "`input` must be"),
    ({"model": EMBED, "input": [""]}, "empty string"),
    ({"model": EMBED, "input": ["x"] * 257}, "the limit is 256"),
    ({"model": EMBED, "input": [list(range(300))]}, "300 tokens"),
    ({"model": EMBED, "input": "x", "encoding_format": "bytes"}, "encoding_format"),
    ({"model": EMBED, "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": EMBED, "input": "x", "dimensions": 8}, "Matryoshka"),
    ({"model": EMBED, "input": "long " * 300}, "maximum context length is 256"),
])
def test_bad_embeddings_get_a_clear_400(qwen: Stack, body: dict[str, Any], needle: str) -> None:
    r = httpx.post(f"{qwen.v1}/embeddings", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def relayed(stack: Stack) -> int:
    """Requests that reached a model (any outcome), from the gateway's own counters."""
    total: int = httpx.get(f"{stack.url}/metrics", timeout=10).json()["requests"]["total"]
    return total


def test_the_wrong_model_is_refused_in_each_apis_words(qwen: Stack,
                                                       client: openai.OpenAI) -> None:
    before = relayed(qwen)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=CHAT, input="cat")
    assert err.value.code == "model_not_supported" and "does not serve embeddings" in str(
        err.value) and EMBED in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=EMBED, messages=[{"role": "user",
                                                                "content": "hi"}])
    assert err.value.code == "model_not_supported" and "embedding model" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=EMBED, input="hi")
    assert err.value.code == "model_not_supported" and "the Responses API" in str(err.value)
    c = ollama.Client(host=qwen.url)
    with pytest.raises(ollama.ResponseError) as oerr:
        c.embed(model=CHAT, input="cat")
    assert oerr.value.status_code == 400
    assert oerr.value.error == f'"{CHAT}" does not support embeddings'
    with pytest.raises(ollama.ResponseError) as oerr:
        c.chat(model="all-minilm", messages=[{"role": "user", "content": "hi"}])
    assert oerr.value.error == '"all-minilm" does not support chat'
    # Refused before routing: none of these reached a model or took a queue slot.
    assert relayed(qwen) == before


# ----- the Responses API through the openai SDK -------------------------------------------
def test_responses_answers_a_question(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="auto", input="What is the capital of France?", temperature=0,
        max_output_tokens=32)
    assert raw.headers["x-zoe-model"] == CHAT and raw.headers["x-zoe-route"] == "default"
    response = raw.parse()
    assert response.status == "completed"
    assert "Paris" in response.output_text
    assert response.usage and response.usage.output_tokens <= 32


def test_a_streamed_response_yields_deltas_and_completes(client: openai.OpenAI) -> None:
    deltas: list[str] = []
    kinds: list[str] = []
    final: Any = None
    with client.responses.stream(model=CHAT, input="What is the capital of France?",
                                 instructions="Answer in one short sentence.",
                                 temperature=0, max_output_tokens=32) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert deltas, kinds
    assert final is not None and "".join(deltas) == final.output_text
    assert "Paris" in final.output_text


def test_a_function_call_round_trip(client: openai.OpenAI) -> None:
    """The call, its output sent back as input items, then the next request gets its own
    call (as in the chat round trip of test_tool_calls.py)."""
    turn = [{"role": "user", "content": "Turn off the kitchen lights."}]
    raw = client.responses.with_raw_response.create(
        model="auto", input=turn, tools=LIGHTS, temperature=0,  # type: ignore[arg-type]
        max_output_tokens=128)
    assert raw.headers["x-zoe-model"] == TOOLS and raw.headers["x-zoe-route"] == "tools"
    first = raw.parse()
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["turn_off_light"], first.output
    assert json.loads(calls[0].arguments) == {"area": "kitchen"}
    history: list[Any] = [*turn, {"type": "function_call", "call_id": calls[0].call_id,
                                  "name": calls[0].name, "arguments": calls[0].arguments},
                          {"type": "function_call_output", "call_id": calls[0].call_id,
                           "output": json.dumps({"success": True})},
                          {"role": "user", "content": "Now turn on the lights in the office."}]
    second = client.responses.create(model="auto", input=history, tools=LIGHTS,  # type: ignore[arg-type]
                                     temperature=0, max_output_tokens=128)
    assert [(c.name, json.loads(c.arguments)) for c in second.output
            if c.type == "function_call"] == [("turn_on_light", {"area": "office"})], second


@pytest.mark.parametrize(("body", "needle"), [
    ({"input": "hi", "previous_response_id": "resp_1"}, "`previous_response_id` is not"),
    ({"input": "hi", "background": True}, "`background` is not"),
    ({}, "`input` is required"),
    ({"input": 5}, "`input` must be"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools[0].name"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}, "image"),
])
def test_bad_responses_get_a_clear_400(qwen: Stack, body: dict[str, Any], needle: str) -> None:
    r = httpx.post(f"{qwen.v1}/responses", json={"model": CHAT, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


# ----- metrics, scraped by a real Prometheus -----------------------------------------------
def test_prometheus_counts_embedding_requests_and_tokens(
        qwen: Stack, client: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory) -> None:
    with running_prometheus(qwen, tmp_path_factory.mktemp("prom")) as prom:
        def value(expr: str) -> float | None:
            result = prometheus_query(prom, expr)
            return float(result[0]["value"][1]) if result else None

        inputs = f'zoe_embedding_inputs_total{{model="{EMBED}"}}'
        tokens = f'zoe_embedding_tokens_total{{model="{EMBED}"}}'
        requests = f'sum(zoe_requests_total{{model="{EMBED}",outcome="ok"}})'
        before = wait_for(lambda: (v := value(requests)) is not None and
                          (value(inputs), value(tokens), v), 60, "a first scrape")
        client.embeddings.create(model=EMBED, input=["cat", "kitten", "car"])
        after = wait_for(lambda: (v := value(requests)) is not None and v > before[2] and
                         (value(inputs), value(tokens), v), 60, "the request to be scraped")
    assert after[0] - before[0] == 3
    assert after[1] - before[1] == 9  # three words, each [CLS] word [SEP]
    assert after[2] - before[2] == 1


def test_the_embedding_worker_is_supervised_like_every_worker(qwen: Stack) -> None:
    """Warmed up with embeddings before READY, and probed with them (a chat probe would
    fail on a pooling model, and three failures would restart it)."""
    sup = load(path=qwen.config_path).config.supervisor
    n = sup.warmup_requests
    assert f"{EMBED}: warming up {n}/{n}" in qwen.log(EMBED)
    interval = sup.health_interval_s
    probed = wait_for(lambda: (w := qwen.worker(EMBED))["probes"]["total"] >= 1 and w,
                      interval + 60, "a health probe of the embedding worker", every=1)
    assert probed["probes"]["failed"] == 0 and probed["probes"]["last_ok"] is True
    assert probed["state"] == "ready" and probed["restarts"] == 0
