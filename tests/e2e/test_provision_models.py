"""Real provisioning, then real vLLM on the result (about 2 minutes on 2 cores).

Provisioning runs through the CLI and vLLM in a child process: vLLM's engine spawns processes
that re-import ``__main__``, and torch/transformers should not leak into the test process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from workers.provision import models as prov
from workers.provision import vision

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}

VLLM_CHAT = textwrap.dedent("""
    import json, sys

    if __name__ == "__main__":
        from vllm import LLM, SamplingParams

        spec = json.loads(sys.argv[1])
        llm = LLM(model=spec["model"], enforce_eager=True, **spec["llm"])
        params = SamplingParams(temperature=0, max_tokens=spec["max_tokens"])
        outs = [llm.chat(messages, params)[0] for messages in spec["chats"]]
        print("RESULT " + json.dumps([
            {"text": o.outputs[0].text, "prompt_tokens": len(o.prompt_token_ids)} for o in outs
        ]))
""")


def run_provision_cli(kind: str, dest: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "workers.provision", kind, str(dest)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == str(dest)
    return done.stderr


def vllm_chat(tmp: Path, model: Path, llm: dict[str, Any], chats: list[Any]) -> list[Any]:
    script = tmp / "vllm_chat.py"
    script.write_text(VLLM_CHAT)
    spec = {"model": str(model), "llm": llm, "max_tokens": 16, "chats": chats}
    done = subprocess.run([sys.executable, str(script), json.dumps(spec)], cwd=tmp, env=ENV,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-6000:]
    result: list[Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def png_data_url(width: int, height: int) -> str:
    from PIL import Image

    image = Image.new("RGB", (width, height), (200, 30, 30))
    for x in range(min(width, height)):
        image.putpixel((x, x), (0, 0, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.name != prov.MARKER}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("models") / "smollm2-135m-instruct"
    log = run_provision_cli("smollm2-gguf", dest)
    for step in ("locating GGUF", "de-quantizing", "writing safetensors", "done in"):
        assert step in log
    return dest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("models") / "tiny-idefics3"
    run_provision_cli("tiny-idefics3", dest)
    return dest


def test_smollm2_is_plain_bf16_with_its_chat_template(smollm2: Path) -> None:
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    with open(smollm2 / "model.safetensors", "rb") as f:
        # safetensors: an 8-byte little-endian header length, then a JSON header.
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    assert len(header) > 200
    assert {t["dtype"] for t in header.values()} == {"BF16"}
    template = (smollm2 / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template and "SmolLM" in template
    assert run_provision_cli("smollm2-gguf", smollm2).strip().endswith("already provisioned: "
                                                                        + str(smollm2))


def test_smollm2_answers_in_vllm(smollm2: Path, tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    [answer] = vllm_chat(tmp_path, smollm2, {"dtype": "bfloat16", "max_model_len": 2048}, [chat])
    assert "Paris" in answer["text"]


def test_tiny_idefics3_is_small_and_deterministic(tiny: Path, tmp_path: Path) -> None:
    assert sum(p.stat().st_size for p in tiny.iterdir()) < 4 * 2**20
    again = tmp_path / "again"
    run_provision_cli("tiny-idefics3", again)
    assert digest(again) == digest(tiny)


def test_tiny_idefics3_chats_about_an_image_in_vllm(tiny: Path, tmp_path: Path) -> None:
    question = "What is in this image?"
    image_chat = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(96, 64)}},
        {"type": "text", "text": question},
    ]}]
    text_chat = [{"role": "user", "content": question}]
    llm = {"max_model_len": 2048, "limit_mm_per_prompt": {"image": 1}}

    with_image, text_only = vllm_chat(tmp_path, tiny, llm, [image_chat, text_chat])

    # 96x64 is scaled to 128 px and cut into a 2x2 grid of 64 px tiles, each
    # <fake><row_r_col_c> + IMAGE_SEQ_LEN x <image>, a newline per row and one before the
    # global view <fake><global-img> + IMAGE_SEQ_LEN x <image> + <fake>; these replace <image>.
    expanded = 4 * (2 + vision.IMAGE_SEQ_LEN) + 2 + 1 + (3 + vision.IMAGE_SEQ_LEN)
    assert with_image["prompt_tokens"] - text_only["prompt_tokens"] == expanded
    for answer in (with_image, text_only):
        assert answer["text"] and answer["text"].isascii() and answer["text"].isprintable()
