"""A tiny random-weight Idefics3 vision-language model, generated offline.

It exists so the image-chat path (processor, placeholder expansion, vision tower, OpenAI content
parts) can be exercised end to end on a CPU box with no hub access. Its answers are gibberish by
design, but always printable ASCII: a worker's warm-up treats an empty answer as a failure, and
random weights would otherwise often emit only special tokens, which detokenize to nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED = 0
# The vision tower sees IMAGE_SIZE px tiles cut into PATCH px patches; pixel shuffle then merges
# SCALE_FACTOR**2 patches per token, so each tile costs IMAGE_SEQ_LEN <image> tokens.
IMAGE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
# Images are first scaled so their longest edge is this, then split into IMAGE_SIZE tiles: at
# most a 2x2 grid plus the global view, i.e. 5 * IMAGE_SEQ_LEN = 80 image tokens per image.
LONGEST_EDGE = 2 * IMAGE_SIZE

# Head dims of 32 because vLLM's CPU attention backend supports no smaller size.
VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}
TEXT = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "tie_word_embeddings": False}

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
END_OF_UTTERANCE = "<end_of_utterance>"
# The names Idefics3Processor and vLLM's Idefics3 prompt replacement look up by string.
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]

# Idefics3's own layout ("User:<image> text<end_of_utterance>\nAssistant:"). It must iterate over
# content parts: vLLM detects that and then hands image parts in as {"type": "image"}.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] in ['image', 'image_url'] %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ ' ' + part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _build_tokenizer() -> Any:
    """A byte-level BPE with no merges: every byte is a token, so it needs no training data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[END_OF_UTTERANCE, *IMAGE_TOKENS], model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _steer_to_printable(model: Any, tokenizer: Any) -> None:
    """Make every token the model can emit a printable ASCII byte.

    Llama's lm_head has no bias, so a constant input is made instead: hidden dim 0 is set to 1.0
    in every embedding and no layer writes to it, so it reaches the final norm unchanged and
    dominates the other (tiny, random) dims. Its lm_head column then adds a large + or - to each
    logit: specials, control and non-ASCII bytes (which would decode to nothing or U+FFFD) lose.
    """
    import torch

    text = model.model.text_model
    printable = torch.tensor([
        i < 256 and len(s := tokenizer.decode([i])) == 1 and s.isascii() and s.isprintable()
        for i in range(model.lm_head.weight.shape[0])
    ])
    with torch.no_grad():
        text.embed_tokens.weight[:, 0] = 1.0
        for layer in text.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.lm_head.weight[:, 0] = torch.where(printable, 1.0, -1.0)


def write_tiny_idefics3(out: Path, progress: Callable[[str], None]) -> None:
    """Write the whole model directory (weights, configs, tokenizer, processor) into ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    progress("building byte-level tokenizer")
    tokenizer = _build_tokenizer()
    eou = tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eou,
           "pad_token_id": tokenizer.pad_token_id}
    config = Idefics3Config(
        vision_config=VISION, text_config={**TEXT, "vocab_size": len(tokenizer), **ids},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=SCALE_FACTOR,
        dtype="bfloat16", **ids,
    )

    progress(f"initialising random weights (seed {SEED})")
    torch.manual_seed(SEED)
    model = Idefics3ForConditionalGeneration(config)
    _steer_to_printable(model, tokenizer)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        **{**ids, "eos_token_id": [eou, tokenizer.eos_token_id]})

    progress("writing safetensors")
    model.save_pretrained(out)

    progress("writing tokenizer, processor and chat template")
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": LONGEST_EDGE}, max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    _pin_pil_image_processor(out / "processor_config.json")


def _pin_pil_image_processor(path: Path) -> None:
    """Name the PIL image processor, which save_pretrained writes as the torchvision one.

    Without torchvision transformers falls back to PIL anyway; pinning it keeps a machine that
    has torchvision from resizing (slightly) differently and so answering differently.
    """
    data = json.loads(path.read_text())
    data["image_processor"]["image_processor_type"] = "Idefics3ImageProcessorPil"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
