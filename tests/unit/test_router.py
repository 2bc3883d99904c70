from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.core.router import Router, UnknownModel
from shared import config as c

CONFIG = """
server: {default_model: llama-3.2-3b}
models:
  - {name: llama-3.2-3b, role: fast, path: /m/a, aliases: ["phi3:mini"]}
  - {name: qwen2.5-coder-7b, role: tools, path: /m/b, aliases: ["hermes3:8b", "qwen2.5:7b"]}
  - {name: qwen2-vl-7b, role: vision, path: /m/c, aliases: ["gemma3n-e2b"], on_demand: true}
"""
FAST, TOOLS, VISION = "llama-3.2-3b", "qwen2.5-coder-7b", "qwen2-vl-7b"


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(c.parse(CONFIG, Path("t.yaml")))


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
TOOL = {"type": "function", "function": {"name": "light", "parameters": {}}}

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # explicit names and the seed's legacy Ollama aliases win over everything
    ("explicit", chat("look at this photo", model=FAST), FAST, "explicit"),
    ("explicit case", chat("hi", model="QWEN2-VL-7B"), VISION, "explicit"),
    ("phi3:mini", chat("hi", model="phi3:mini"), FAST, "alias"),
    ("hermes3:8b", chat("hi", model="hermes3:8b"), TOOLS, "alias"),
    ("gemma3n-e2b", chat("hi", model="gemma3n-e2b"), VISION, "alias"),
    ("qwen2.5:7b", chat("hi", model="qwen2.5:7b"), TOOLS, "alias"),
    (":latest tag", chat("hi", model="llama-3.2-3b:latest"), FAST, "explicit"),
    ("auto", chat("hello", model="auto"), FAST, "default"),
    # structure
    ("image part", {"messages": [{"role": "user", "content": [IMAGE]}]}, VISION, "image"),
    ("image wins over tools", {"messages": [{"role": "user", "content": [IMAGE]}],
                               "tools": [TOOL]}, VISION, "image"),
    ("ollama images", {"messages": [{"role": "user", "content": "x", "images": ["AA"]}]},
     VISION, "image"),
    ("tools", chat("hello", tools=[TOOL]), TOOLS, "tools"),
    ("tool_choice none", chat("hello", tools=[TOOL], tool_choice="none"), FAST, "default"),
    ("empty tools", chat("hello", tools=[]), FAST, "default"),
    # the seed's keywords
    ("image", chat("Describe this image"), VISION, "keyword:vision"),
    ("photo", chat("any photo?"), VISION, "keyword:vision"),
    ("picture", chat("A PICTURE"), VISION, "keyword:vision"),
    ("see", chat("what do you see"), VISION, "keyword:vision"),
    ("look", chat("look here"), VISION, "keyword:vision"),
    ("analyze image", chat("please analyze  image 3"), VISION, "keyword:vision"),
    ("turn", chat("Turn off the kitchen lights"), TOOLS, "keyword:tools"),
    ("set", chat("set the thermostat to 21"), TOOLS, "keyword:tools"),
    ("control", chat("control the fan"), TOOLS, "keyword:tools"),
    ("add to list", chat("add to list: milk"), TOOLS, "keyword:tools"),
    ("create event", chat("create event tomorrow"), TOOLS, "keyword:tools"),
    ("schedule", chat("schedule a call"), TOOLS, "keyword:tools"),
    ("analyze", chat("analyze my spending"), TOOLS, "keyword:reasoning"),
    ("plan", chat("plan my week"), TOOLS, "keyword:reasoning"),
    ("workflow", chat("a workflow"), TOOLS, "keyword:reasoning"),
    ("strategy", chat("a strategy"), TOOLS, "keyword:reasoning"),
    ("compare", chat("compare these"), TOOLS, "keyword:reasoning"),
    # words that must NOT match (word boundaries)
    ("settings", chat("open the settings page"), FAST, "default"),
    ("sunset", chat("when is sunset"), FAST, "default"),
    ("returned", chat("I returned it"), FAST, "default"),
    ("seed", chat("plant a seed"), FAST, "default"),
    ("planet", chat("name a planet"), FAST, "default"),
    ("lookup", chat("lookup"), FAST, "default"),
    ("imagery", chat("poetic imagery"), FAST, "default"),
    ("add to the list", chat("add eggs to the list"), FAST, "default"),
    # only the latest user message counts
    ("latest only", {"messages": [{"role": "user", "content": "turn on the light"},
                                  {"role": "assistant", "content": "done"},
                                  {"role": "user", "content": "thanks"}]}, FAST, "default"),
    ("text parts", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "schedule it"}]}]}, TOOLS, "keyword:tools"),
    ("plain chat", chat("Hello there"), FAST, "default"),
    ("completions prompt", {"prompt": "turn on"}, TOOLS, "keyword:tools"),
    ("odd messages", {"messages": "not a list"}, FAST, "default"),
]


@pytest.mark.parametrize("body,model,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_route(router: Router, body: dict[str, Any], model: str, reason: str) -> None:
    decision = router.route(body)
    assert (decision.model, decision.label) == (model, reason)


def test_unknown_model_lists_known_names(router: Router) -> None:
    with pytest.raises(UnknownModel) as info:
        router.route(chat("hi", model="gpt-4"))
    assert info.value.name == "gpt-4"
    assert "phi3:mini" in info.value.known and FAST in info.value.known


def test_missing_role_falls_through_to_default() -> None:
    cfg = c.parse("server: {default_model: a}\nmodels:\n  - {name: a, role: fast, path: /x}\n",
                  Path("t.yaml"))
    r = Router(cfg)
    assert r.route({"messages": [{"role": "user", "content": [IMAGE]}]}).model == "a"
    assert r.route(chat("turn it on", tools=[TOOL])).label == "default"
