"""Cheap checks of a chat or completion body, made before routing loads anything.

vLLM validates the whole body in the worker, but only once the model is loaded: a junk
request to an on-demand model would first swap it in (and another model out). These
checks refuse, up front, what vLLM would refuse anyway: messages that are not messages,
roles and content parts it does not know, and sampling values of the wrong type or out of
range. Anything they pass is still validated by vLLM; they never refuse what it accepts
(it coerces numeric strings, so those pass here too).
"""

from __future__ import annotations

from typing import Any

from gateway.core.errors import BadRequest

# OpenAI's roles, its legacy "function", and Llama 3's "ipython" (tool results), which
# vLLM renders through the model's template.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function", "ipython"})
# name -> (lowest allowed, whether the lowest is allowed, highest allowed or None)
NUMBERS: dict[str, tuple[float, bool, float | None]] = {
    "temperature": (0.0, True, None),
    "top_p": (0.0, False, 1.0),
    "min_p": (0.0, True, 1.0),
    "presence_penalty": (-2.0, True, 2.0),
    "frequency_penalty": (-2.0, True, 2.0),
    "repetition_penalty": (0.0, False, None),
}
# max_tokens 0 is vLLM's prompt-only completion (with echo); chat refuses it in the worker.
COUNTS: dict[str, int] = {"max_tokens": 0, "max_completion_tokens": 1, "n": 1,
                          "min_tokens": 0}


def check_messages_shape(messages: list[Any]) -> None:
    """Each message an object with a known role and content vLLM can render."""
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise BadRequest(400, f"`{where}` must be an object with `role` and `content`",
                             param=where)
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(400, f"`{where}.role` must be one of {', '.join(sorted(ROLES))}"
                                  f", not {role!r}", param=f"{where}.role")
        content = msg.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise BadRequest(400, f"`{where}.content` must be a string, null or a list of "
                                  "content parts", param=f"{where}.content")
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(400, f"`{at}` must be an object with a `type`", param=at)
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise BadRequest(400, f"`{at}.text` must be a string", param=f"{at}.text")


def check_sampling(body: dict[str, Any]) -> None:
    """Sampling values of a number type and within the ranges vLLM enforces."""
    for name, (low, low_ok, high) in NUMBERS.items():
        value = _number(body, name)
        if value is None:
            continue
        if value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f"{'≥' if low_ok else '>'} {low:g}" + (f" and ≤ {high:g}" if high else "")
            raise BadRequest(400, f"`{name}` must be {bound}, not {body[name]!r}", param=name)
    for name, least in COUNTS.items():
        value = _number(body, name)
        if value is None:
            continue
        if value != int(value) or value < least:
            raise BadRequest(400, f"`{name}` must be an integer ≥ {least}, not {body[name]!r}",
                             param=name)


def _number(body: dict[str, Any], name: str) -> float | None:
    """``body[name]`` as a number; None when absent or null; BadRequest when not a number."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(400, f"`{name}` must be a number, not {value!r}", param=name)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise BadRequest(400, f"`{name}` must be a number, not {value!r}", param=name) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise BadRequest(400, f"`{name}` must be a finite number, not {value!r}", param=name)
    return number
