"""The cpu profile's chat model as this CPU serves it, quantized, through the whole stack:
provisioned from the shipped GGUF, served by a real vLLM worker, asked through the official
``openai`` client.

On x86 (AVX2 or AVX-512) the profile's ``qwen2.5-coder-0.5b-cpu`` kind becomes W8A8 int8
(``shared.platform.cpu_profile_scheme``). The quantization itself is unit-tested layer by
layer in ``tests/unit/test_awq.py``; this shows the result still knows its facts, and that the
engine runs the int8 weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from shared import config as cfgmod
from shared.platform import cpu_flags, cpu_profile_scheme
from tests.e2e.conftest import Stack, running_stack
from workers.provision.models import MARKER, RECIPES, provisioned_kind

pytestmark = pytest.mark.e2e

CHAT = "qwen2.5-coder-0.5b-chat"
SCHEME = cpu_profile_scheme(cpu_flags())


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if SCHEME is None:
        pytest.skip("no AVX2 on this CPU: the cpu profile serves the chat model in bf16, "
                    "which every other end-to-end test exercises")
    with running_stack(tmp_path_factory.mktemp("quantized"), "cpu", models=[CHAT]) as s:
        yield s


def test_the_quantized_model_knows_the_capital_of_france(quantized: Stack) -> None:
    client = openai.OpenAI(base_url=quantized.v1, api_key="unused", max_retries=0,
                           timeout=300)
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert raw.headers["x-zoe-model"] == CHAT
    answer = raw.parse().choices[0].message.content or ""
    assert "Paris" in answer, answer
    # The directory was built as this CPU's form, and the engine runs it as such.
    cpu = cfgmod.load(profile="cpu")
    assert provisioned_kind(cpu.model_path(cpu.model(CHAT))) == f"qwen2.5-coder-0.5b-{SCHEME}"
    log = quantized.log(CHAT)
    assert "instruct-cpu" in log and "quantization=compressed-tensors" in log, log[-3000:]
    if SCHEME == "w8a8":  # the LM head too, by the current recipe
        path = cpu.model_path(cpu.model(CHAT))
        config = json.loads((path / "config.json").read_text())
        assert "lm_head" in config["quantization_config"]["config_groups"]["group_0"]["targets"]
        assert json.loads((path / MARKER).read_text())["recipe"] == RECIPES["w8a8"]
