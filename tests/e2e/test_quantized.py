"""The quantized 0.5B through the whole stack: provisioned from the shipped GGUF, served by a
real vLLM worker, asked through the official ``openai`` client.

The form is the one vLLM's CPU build runs on this machine (``shared.platform``): 4-bit AWQ
with AVX-512, W8A8 int8 on AVX2. The quantization itself is unit-tested layer by layer in
``tests/unit/test_awq.py``; this shows the result still knows its facts.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from shared.platform import cpu_flags, cpu_weight_scheme
from tests.e2e.conftest import Stack, running_stack

pytestmark = pytest.mark.e2e

CHAT = "qwen2.5-coder-0.5b-chat"
SCHEME = cpu_weight_scheme(cpu_flags())


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if SCHEME is None:
        pytest.skip("this CPU has neither AVX-512 (4-bit AWQ) nor AVX2 (W8A8 int8), the "
                    "quantized kernels vLLM's CPU build has been seen to run")
    overrides = {CHAT: {"path": f"{{models}}/qwen2.5-coder-0.5b-instruct-{SCHEME}",
                        "provision": f"qwen2.5-coder-0.5b-{SCHEME}", "cpu_cores": "0-1"}}
    with running_stack(tmp_path_factory.mktemp("quantized"), "cpu", models=[CHAT],
                       overrides=overrides) as s:
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
    # The worker's engine runs the quantized directory, not the bf16 one beside it.
    engine = {"awq": "awq", "w8a8": "compressed-tensors"}[SCHEME or ""]
    log = quantized.log(CHAT)
    assert f"instruct-{SCHEME}" in log and f"quantization={engine}" in log, log[-3000:]
