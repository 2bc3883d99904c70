from __future__ import annotations

from pathlib import Path

import pytest

from shared import client as zc


def test_jetson_uses_vllm(tmp_path: Path) -> None:
    tegra = tmp_path / "nv_tegra_release"
    tegra.write_text("# R36 (release), REVISION: 4.3")
    p = zc.detect_provider({}, tegra)
    assert isinstance(p, zc.VLLMProvider) and p.url == zc.DEFAULT_URL


def test_elsewhere_uses_ollama(tmp_path: Path) -> None:
    assert isinstance(zc.detect_provider({}, tmp_path / "missing"), zc.OllamaProvider)


def test_environment_overrides(tmp_path: Path) -> None:
    p = zc.detect_provider({"ZOE_LLM_PROVIDER": "VLLM", "ZOE_LLM_URL": "http://box:9/",
                            "ZOE_LLM_MODEL": "m"}, tmp_path / "missing")
    assert isinstance(p, zc.VLLMProvider) and p.url == "http://box:9" and p.model == "m"
    with pytest.raises(ValueError, match="ZOE_LLM_PROVIDER"):
        zc.detect_provider({"ZOE_LLM_PROVIDER": "gpt"}, tmp_path / "missing")


def test_request_shapes() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert zc.VLLMProvider().body(msgs, None, True, {"max_tokens": 3}) == {
        "model": "auto", "messages": msgs, "stream": True, "max_tokens": 3}
    assert zc.OllamaProvider(model="phi3:mini").body(msgs, None, False, {"num_predict": 3}) == {
        "model": "phi3:mini", "messages": msgs, "stream": False, "options": {"num_predict": 3}}


def test_stream_parsing() -> None:
    v = zc.VLLMProvider()
    assert v.piece('data: {"choices": [{"delta": {"content": "Hi"}}]}') == "Hi"
    assert v.piece("data: [DONE]") is None
    assert v.piece(": keep-alive") == ""
    with pytest.raises(zc.ProviderError, match="boom"):
        v.piece('data: {"error": {"message": "boom"}}')
    o = zc.OllamaProvider()
    assert o.piece('{"message": {"content": "Hi"}, "done": false}') == "Hi"
    assert o.piece('{"message": {"content": ""}, "done": true}') is None
