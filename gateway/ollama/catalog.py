"""What Ollama's /api/tags, /api/show and /api/ps say about each model.

Facts come from the model's own files (``config.json``, safetensors headers,
sizes), read once and cached; nothing is loaded and vLLM is never imported.
Memory for /api/ps is the resident size of the worker's whole process tree
(the worker, vLLM's EngineCore and its children).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.config import LoadedConfig, ModelConfig, Role

log = logging.getLogger("zoe.gateway")

DTYPES = {"bfloat16": "BF16", "float16": "F16", "half": "F16", "float32": "F32",
          "float": "F32"}
MAX_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True)
class ModelFacts:
    size: int  # bytes on disk
    modified: float  # newest file's mtime
    digest: str
    family: str
    parameters: int | None
    file_format: str
    dtype: str


def tagged(name: str) -> str:
    """Ollama names carry a tag; a bare name is ``name:latest``."""
    return name if ":" in name else f"{name}:latest"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parameter_size(n: int | None) -> str:
    if not n:
        return ""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{round(n / 1e6)}M"


def safetensors_parameters(path: Path) -> int:
    """Parameter count from a safetensors file's header (no tensor is read)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > MAX_HEADER:
            raise ValueError(f"{path}: implausible safetensors header size {size}")
        header = json.loads(f.read(size))
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for dim in info.get("shape", []):
                count *= int(dim)
            total += count
    return total


class Catalog:
    def __init__(self, cfg: LoadedConfig, started: float) -> None:
        self.cfg = cfg
        self.started = started
        self._facts: dict[str, ModelFacts] = {}

    def facts(self, m: ModelConfig) -> ModelFacts:
        cached = self._facts.get(m.name)
        if cached is not None:
            return cached
        facts = self._read(m)
        if facts.size:  # a model still being provisioned is read again next time
            self._facts[m.name] = facts
        return facts

    def _read(self, m: ModelConfig) -> ModelFacts:
        root = self.cfg.model_path(m)
        files = [f for f in root.rglob("*") if f.is_file()] if root.is_dir() else []
        size = sum(f.stat().st_size for f in files)
        modified = max((f.stat().st_mtime for f in files), default=self.started)
        config: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            config = json.loads((root / "config.json").read_text())
        nested = config.get("text_config")
        text_config: dict[str, Any] = nested if isinstance(nested, dict) else {}
        params: int | None = None
        weights = [f for f in files if f.suffix == ".safetensors"]
        try:
            params = sum(safetensors_parameters(f) for f in weights) or None
        except (OSError, ValueError, struct.error) as exc:
            log.warning("cannot count the parameters of %s: %s", m.name, exc)
        dtype = m.dtype if m.dtype != "auto" else str(
            config.get("torch_dtype") or config.get("dtype") or text_config.get("torch_dtype")
            or "")
        digest = hashlib.sha256(f"{m.name}|{root}|{size}|{modified}".encode()).hexdigest()
        return ModelFacts(size=size, modified=modified, digest=digest,
                          family=str(config.get("model_type") or ""), parameters=params,
                          file_format="safetensors" if weights else "",
                          dtype=DTYPES.get(dtype, dtype.upper()))

    def details(self, m: ModelConfig) -> dict[str, Any]:
        f = self.facts(m)
        return {"parent_model": "", "format": f.file_format, "family": f.family,
                "families": [f.family] if f.family else None,
                "parameter_size": parameter_size(f.parameters),
                "quantization_level": (m.quantization or "").upper() or f.dtype}

    def tags(self) -> list[dict[str, Any]]:
        """Every routable name — each model and each alias — as an Ollama model."""
        out = []
        for m in self.cfg.models:
            f = self.facts(m)
            for name in (m.name, *m.aliases):
                out.append({"name": tagged(name), "model": tagged(name),
                            "modified_at": iso(f.modified), "size": f.size, "digest": f.digest,
                            "details": self.details(m)})
        return out

    def show(self, m: ModelConfig, context_length: int) -> dict[str, Any]:
        f = self.facts(m)
        arch = f.family or "unknown"
        capabilities = ["embedding"] if m.role is Role.EMBEDDING else ["completion"]
        if m.tool_call_parser:
            capabilities.append("tools")
        if m.role is Role.VISION:
            capabilities.append("vision")
        info: dict[str, Any] = {"general.architecture": arch,
                                f"{arch}.context_length": context_length}
        if f.parameters:
            info["general.parameter_count"] = f.parameters
        return {"license": "", "modelfile": f"# served by zoe-vllm\nFROM "
                                            f"{self.cfg.model_path(m)}\n",
                "parameters": f"num_ctx {context_length}", "template": self._template(m),
                "details": self.details(m), "model_info": info, "capabilities": capabilities,
                "modified_at": iso(f.modified)}

    def _template(self, m: ModelConfig) -> str:
        """The chat template vLLM applies (Jinja, not Ollama's Go templates)."""
        path = self.cfg.chat_template_path(m)
        with contextlib.suppress(OSError, ValueError):
            if path is not None:
                return path.read_text()
            tok = json.loads((self.cfg.model_path(m) / "tokenizer_config.json").read_text())
            template = tok.get("chat_template")
            return template if isinstance(template, str) else ""
        return ""
