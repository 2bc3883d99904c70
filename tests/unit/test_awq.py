"""The quantization steps on small layers: error bounds, and vLLM's own reader of the layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.provision import awq

OUT, IN = 64, 128


def q4k_like(out: int, n_in: int, seed: int = 0) -> torch.Tensor:
    """A layer as our GGUF de-quantizes: each 32-group is ``d * q - m`` with q in 0..15."""
    g = torch.Generator().manual_seed(seed)
    groups = n_in // 32
    d = torch.rand(out, groups, 1, generator=g) * 0.01 + 0.001
    m = torch.rand(out, groups, 1, generator=g) * 8 * d
    q = torch.randint(0, 16, (out, groups, 32), generator=g).float()
    return (d * q - m).view(out, n_in).to(torch.bfloat16)


def test_each_group_is_no_worse_than_min_max_rounding() -> None:
    w = q4k_like(OUT, IN)
    quantized = awq.quantize(w)
    err = (quantized.dequantize() - w.float()).view(OUT, IN // 32, 32)
    groups = w.float().view(OUT, IN // 32, 32)
    lo, hi = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
    step = (hi - lo) / awq.LEVELS
    # Half a min-max step per weight, in RMS over the group; 1% for the bf16 scale.
    rms = err.square().mean(-1).sqrt()
    assert bool((rms <= step / 2 * 1.01).all()), float((rms / step).max())
    assert quantized.q.max() <= 15 and quantized.zeros.max() <= 15


def test_a_gaussian_layer_keeps_its_output_within_stated_tolerance() -> None:
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(OUT, IN, generator=g) * 0.02).to(torch.bfloat16)
    x = torch.randn(16, IN, generator=g)
    quantized = awq.quantize(w)
    rel_w = float((quantized.dequantize() - w.float()).norm() / w.float().norm())
    y, y_hat = x @ w.float().t(), x @ quantized.dequantize().t()
    rel_y = float((y_hat - y).norm() / y.norm())
    # 4-bit groups of 32 with clipping: about 6% of the weight norm for a Gaussian.
    assert rel_w < 0.08, rel_w
    assert rel_y < 0.08, rel_y


def test_vllms_awq_reader_sees_the_values_we_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.model_executor.layers.quantization import auto_awq
    from vllm.model_executor.layers.quantization.utils.quant_utils import (
        unpack_quantized_values_into_int32,
    )
    from vllm.scalar_type import scalar_types

    quantized = awq.quantize(q4k_like(OUT, IN, seed=2))
    stored = awq.to_awq(quantized)
    assert stored["qweight"].shape == (IN, OUT // 8) and stored["qweight"].dtype == torch.int32
    assert stored["qzeros"].shape == (IN // 32, OUT // 8)
    assert stored["scales"].shape == (IN // 32, OUT) and stored["scales"].dtype == torch.bfloat16

    # vLLM's parameter class asks for a tensor-parallel group, which needs an engine; the
    # unpacking and re-ordering under test are vLLM's own.
    def plain(data: torch.Tensor, **_: object) -> torch.nn.Parameter:
        return torch.nn.Parameter(data, requires_grad=False)
    monkeypatch.setattr(auto_awq, "PackedvLLMParameter", plain)
    layer = torch.nn.Module()
    layer.qweight = torch.nn.Parameter(stored["qweight"], requires_grad=False)
    layer.qzeros = torch.nn.Parameter(stored["qzeros"], requires_grad=False)
    auto_awq._convert_awq_to_standard_format(layer, "qweight", "qzeros", 4)
    q = unpack_quantized_values_into_int32(layer.qweight.data, scalar_types.uint4, 0)  # [in, out]
    z = unpack_quantized_values_into_int32(layer.qzeros.data, scalar_types.uint4, 0)  # [out, g]
    assert torch.equal(q, quantized.q.t().to(torch.int32))
    assert torch.equal(z, quantized.zeros.to(torch.int32))


def test_only_decoder_linear_weights_are_quantized() -> None:
    assert awq.is_quantized_linear("model.layers.3.mlp.down_proj.weight")
    assert awq.is_quantized_linear("model.layers.0.self_attn.k_proj.weight")
    assert not awq.is_quantized_linear("model.layers.0.self_attn.k_proj.bias")
    assert not awq.is_quantized_linear("model.embed_tokens.weight")
    assert not awq.is_quantized_linear("model.layers.0.input_layernorm.weight")
    assert not awq.is_quantized_linear("lm_head.weight")


def test_a_layer_not_a_multiple_of_the_group_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of the group size"):
        awq.quantize(torch.zeros(8, 40))


def test_write_awq_makes_a_directory_vllm_would_read_as_awq(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, out = tmp_path / "bf16", tmp_path / "awq"
    src.mkdir()
    out.mkdir()
    w = q4k_like(OUT, IN, seed=3)
    save_file({"model.layers.0.mlp.up_proj.weight": w,
               "model.embed_tokens.weight": torch.ones(10, IN, dtype=torch.bfloat16)},
              str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (src / "tokenizer.json").write_text("{}")
    steps: list[str] = []
    report = awq.write_awq(src, out, steps.append)

    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "awq"
    assert config["quantization_config"]["group_size"] == 32
    assert (out / "tokenizer.json").is_file()
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert keys == {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.qweight",
                    "model.layers.0.mlp.up_proj.qzeros", "model.layers.0.mlp.up_proj.scales"}
    assert report.layers == 1 and 0 < report.rel_rmse < 0.1
    assert report.bytes_after < report.bytes_before
    assert steps and "relative RMS error" in steps[-1]


def test_int8_channels_are_within_half_a_step() -> None:
    w = q4k_like(OUT, IN, seed=4)
    q, scale = awq.quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (OUT, 1)
    err = (q.float() * scale - w.float()).abs()
    assert bool((err <= scale / 2 * 1.0001).all())


def test_write_w8a8_is_compressed_tensors_int8(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, out = tmp_path / "bf16", tmp_path / "w8a8"
    src.mkdir()
    out.mkdir()
    save_file({"model.layers.0.self_attn.q_proj.weight": q4k_like(OUT, IN, seed=5)},
              str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    report = awq.write_w8a8(src, out, lambda _: None)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["config_groups"]["group_0"]["weights"]["num_bits"] == 8
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert fh.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.int8
        assert fh.get_tensor("model.layers.0.self_attn.q_proj.weight_scale").shape == (OUT, 1)
    assert report.layers == 1 and report.rel_rmse < 0.01


@pytest.mark.parametrize("tied", [True, False])
def test_write_w8a8_quantizes_the_lm_head(tmp_path: Path, tied: bool) -> None:
    """The head in int8 whether it had its own tensor or shared the embeddings'; the lookup
    table stays bf16, and a tied model is untied (two tensors from then on)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, out = tmp_path / "bf16", tmp_path / "w8a8"
    src.mkdir()
    out.mkdir()
    vocab = q4k_like(OUT, IN, seed=6)
    tensors = {"model.layers.0.mlp.up_proj.weight": q4k_like(OUT, IN, seed=7),
               "model.embed_tokens.weight": vocab}
    if not tied:
        tensors["lm_head.weight"] = q4k_like(OUT, IN, seed=8)
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2",
                                                 "tie_word_embeddings": tied}))
    steps: list[str] = []
    report = awq.write_w8a8(src, out, steps.append)

    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert config["quantization_config"]["ignore"] == []
    assert "lm_head" in config["quantization_config"]["config_groups"]["group_0"]["targets"]
    head = vocab if tied else tensors["lm_head.weight"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert set(fh.keys()) == {"model.embed_tokens.weight", "lm_head.weight",
                                  "lm_head.weight_scale", "model.layers.0.mlp.up_proj.weight",
                                  "model.layers.0.mlp.up_proj.weight_scale"}
        assert torch.equal(fh.get_tensor("model.embed_tokens.weight"), vocab)
        q, scale = fh.get_tensor("lm_head.weight"), fh.get_tensor("lm_head.weight_scale")
    assert q.dtype == torch.int8 and scale.shape == (OUT, 1)
    assert bool(((q.float() * scale - head.float()).abs() <= scale / 2 * 1.0001).all())
    assert report.layers == 2 and report.rel_rmse < 0.01
    assert any("LM head" in s for s in steps) == tied


def test_vllm_reads_our_w8a8_head_as_int8_and_the_embeddings_as_bf16() -> None:
    """vLLM's own config reader on W8A8_CONFIG: the LM head gets the int8 scheme (served by
    oneDNN like every other layer), the embedding lookup none."""
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsConfig,
    )
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (
        CompressedTensorsW8A8Int8,
    )

    config = CompressedTensorsConfig.from_config(awq.W8A8_CONFIG)
    assert isinstance(config.get_scheme(torch.nn.Module(), "lm_head"), CompressedTensorsW8A8Int8)
    assert config.get_scheme_dict(torch.nn.Module(), "model.embed_tokens") is None
