"""Which model serves a request, and why.

In order: an explicit configured name or alias; else structure (an image part
→ vision, ``tools`` with ``tool_choice`` not ``none`` → tools); else keywords
on the latest user message (whole words, case-insensitive); else the default
(fast) model. A decision costs microseconds: one dict lookup, a scan of the
messages for image parts, and one precompiled regex per keyword list.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from gateway.core.images import is_image_part
from shared.config import LoadedConfig, Role

AUTO_NAMES = frozenset({"", "auto", "default"})


class RouteReason(enum.Enum):
    EXPLICIT = "explicit"  # the model's configured name
    ALIAS = "alias"  # one of its aliases
    IMAGE = "image"  # an image part: the vision model
    TOOLS = "tools"  # tools offered: the tools model
    KEYWORD = "keyword"  # a keyword list matched the latest user message
    DEFAULT = "default"
    FALLBACK = "fallback"  # the model routed to could not serve; the next in its chain did


@dataclass(frozen=True, slots=True)
class Decision:
    model: str
    reason: RouteReason
    detail: str = ""  # the keyword list, or the model a fallback came from

    @property
    def label(self) -> str:
        """As the ``x-zoe-route`` header and the metrics show it: ``keyword:tools``."""
        return f"{self.reason.value}:{self.detail}" if self.detail else self.reason.value


class UnknownModel(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known


def _keyword_regex(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    alts = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in
                    sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alts})\b", re.IGNORECASE)


class Router:
    def __init__(self, cfg: LoadedConfig) -> None:
        self.default = cfg.default_model.name
        self.names: dict[str, tuple[str, RouteReason]] = {}
        for m in cfg.models:
            self.names[m.name.lower()] = (m.name, RouteReason.EXPLICIT)
            for alias in m.aliases:
                self.names[alias.lower()] = (m.name, RouteReason.ALIAS)
        self.by_role = {m.role: m.name for m in cfg.models}
        r = cfg.config.routing
        self.keyword_rules: list[tuple[str, Role, re.Pattern[str]]] = [
            (label, role, rx) for label, role, words in (
                ("vision", Role.VISION, r.vision_keywords),
                ("tools", Role.TOOLS, r.tools_keywords),
                ("reasoning", r.reasoning_role, r.reasoning_keywords),
            ) if (rx := _keyword_regex(words)) is not None and role in self.by_role
        ]

    def resolve(self, name: str) -> tuple[str, RouteReason] | None:
        """A configured model for ``name`` (exact, alias, or with ``:latest``)."""
        key = name.strip().lower()
        hit = self.names.get(key)
        if hit is None and key.endswith(":latest"):
            hit = self.names.get(key[: -len(":latest")])
        return hit

    def known_names(self) -> list[str]:
        return sorted(self.names)

    def route(self, body: dict[str, Any]) -> Decision:
        requested = body.get("model")
        if isinstance(requested, str) and requested.strip().lower() not in AUTO_NAMES:
            hit = self.resolve(requested)
            if hit is None:
                raise UnknownModel(requested, self.known_names())
            return Decision(hit[0], hit[1])
        messages = body.get("messages")
        if isinstance(messages, list):
            if Role.VISION in self.by_role and _has_image(messages):
                return Decision(self.by_role[Role.VISION], RouteReason.IMAGE)
            tools = body.get("tools")
            if tools and body.get("tool_choice") != "none" and Role.TOOLS in self.by_role:
                return Decision(self.by_role[Role.TOOLS], RouteReason.TOOLS)
            text = _latest_user_text(messages)
        else:
            prompt = body.get("prompt")
            text = prompt if isinstance(prompt, str) else ""
        if text:
            for label, role, rx in self.keyword_rules:
                if rx.search(text):
                    return Decision(self.by_role[role], RouteReason.KEYWORD, label)
        return Decision(self.default, RouteReason.DEFAULT)


def _has_image(messages: list[Any]) -> bool:
    for msg in messages:
        if isinstance(msg, dict):
            content = msg.get("content")
            if isinstance(content, list):
                for part in content:
                    if is_image_part(part):
                        return True
            if msg.get("images"):  # Ollama-style
                return True
    return False


def _latest_user_text(messages: list[Any]) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(part.get("text", "") for part in content
                                if isinstance(part, dict) and isinstance(part.get("text"), str))
            return ""
    return ""
