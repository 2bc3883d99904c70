"""The tool-calling cases and their scoring (bench/eval_tools.py), without a server.

The real case file and catalog are loaded here, so a broken case fails the suite
before anyone spends a model run on it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench import eval_tools as ev
from bench.common import BenchError
from bench.tools_report import against_targets, write
from shared import config as cfg

CASES_DIR = ev.CASES.parent
HA_PROMPT = CASES_DIR / "ha_system_prompt.txt"
HA_PROMPT_OLDER = CASES_DIR / "ha_system_prompt_no_live_context.txt"
# sha256 of the first 58 lines of cases.jsonl: the original cases, whose results the
# published reports compare. Changing one is a new version of the data set (README).
ORIGINAL_SHA256 = "38cb3452b6e168b7c5e2f9be2f9d3d9295c712f946f3f6716a92f9f9ffad5f99"
# Arguments that name a thing of the home, checked against the system prompt's list.
# (HassListAddItem's `name` is a to-do list, an entity too; a timer's is free text.)
FREE_NAMES = {"HassStartTimer", "HassCancelTimer", "HassTimerStatus"}


@pytest.fixture(scope="module")
def catalog() -> dict[str, dict[str, Any]]:
    return ev.load_catalog()


@pytest.fixture(scope="module")
def cases(catalog: dict[str, dict[str, Any]]) -> list[ev.Case]:
    return ev.load_cases(ev.CASES, catalog)


def ha_cases(cases: list[ev.Case]) -> list[ev.Case]:
    return [c for c in cases if ev.group_of(c.category) == "ha"]


def static_context(text: str) -> tuple[set[str], set[str]]:
    """The entity names (aliases included) and areas of a prompt's device list."""
    marker = "Static Context: An overview of the areas and the devices in this smart home:\n"
    assert marker in text
    entities = yaml.safe_load(text.split(marker, 1)[1])
    names = {n.strip().lower() for e in entities for n in e["names"].split(",")}
    areas = {e["areas"].lower() for e in entities if "areas" in e}
    return names, areas


# ----- the real data --------------------------------------------------------------
def test_the_original_cases_are_unchanged(cases: list[ev.Case]) -> None:
    lines = ev.CASES.read_text().splitlines(keepends=True)
    original = [c for c in cases if ev.group_of(c.category) == "original"]
    assert len(original) == 58
    assert all(c.system is None and c.messages is None and not c.alternatives
               for c in original)
    assert hashlib.sha256("".join(lines[:58]).encode()).hexdigest() == ORIGINAL_SHA256


def test_the_home_assistant_cases_cover_what_ha_sends(cases: list[ev.Case]) -> None:
    ha = ha_cases(cases)
    assert len(ha) >= 40
    assert all(c.system is not None for c in ha)
    chit_chat = [c for c in ha if c.category == "ha_no_tool"]
    assert len(chit_chat) >= 10 and all(c.expected is None for c in chit_chat)
    multi_turn = [c for c in ha if c.messages is not None and c.expected is not None]
    assert len(multi_turn) >= 6
    after_result = [c for c in ha if c.messages and c.messages[-1]["role"] == "tool"]
    assert after_result and all(c.expected is None for c in after_result)
    assert len([c for c in ha if c.expected is not None]) >= 30
    assert len({c.id for c in cases}) == len(cases)


def test_ha_tools_are_loose_and_the_old_ones_strict(catalog: dict[str, dict[str, Any]],
                                                    cases: list[ev.Case]) -> None:
    ha_tools = {t for c in ha_cases(cases) for t in c.tools}
    assert {"HassTurnOn", "HassTurnOff", "HassLightSet", "GetLiveContext",
            "HassListAddItem", "HassStartTimer"} <= ha_tools
    for name in ha_tools:
        fn = catalog[name]["function"]
        assert not fn.get("strict"), name
        assert fn["parameters"].get("additionalProperties") is not False, name
    for c in cases:
        if ev.group_of(c.category) == "original":
            assert all(catalog[t]["function"]["strict"] is True for t in c.tools), c.id


def test_every_name_and_area_in_a_right_answer_is_in_the_home(cases: list[ev.Case]) -> None:
    checked = 0
    for case in ha_cases(cases):
        assert case.system is not None
        names, areas = static_context((CASES_DIR / case.system).read_text())
        if case.expected is None:
            continue
        for args in [case.expected["arguments"], *case.alternatives]:
            if "name" in args and case.expected["name"] not in FREE_NAMES:
                for name in [args["name"], *case.accept.get("name", [])]:
                    assert name.lower() in names, (case.id, name)
                    checked += 1
            if "area" in args:
                assert args["area"].lower() in areas, (case.id, args["area"])
                checked += 1
            if "todo_list" in args:
                assert args["todo_list"].lower() in names, case.id
    assert checked > 50


def test_the_ha_system_prompt_is_about_1500_tokens() -> None:
    text = HA_PROMPT.read_text()
    assert 1200 <= len(text) / 4 <= 2500  # a crude chars/4 token estimate
    assert text.startswith("You are a voice assistant for Home Assistant.")
    assert "always call the intent tools" in text and "`GetLiveContext`" in text
    names, areas = static_context(text)
    assert len(names) >= 40 and {"kitchen light", "front door", "shopping list"} <= names
    assert {"kitchen", "living room", "bedroom"} <= areas


def test_the_older_prompt_is_the_same_home_without_live_context() -> None:
    older = HA_PROMPT_OLDER.read_text()
    assert "GetLiveContext" not in older
    assert static_context(older) == static_context(HA_PROMPT.read_text())


def test_request_messages(cases: list[ev.Case]) -> None:
    by_id = {c.id: c for c in cases}
    assert ev.request_messages(by_id["lights-01"]) == [
        {"role": "user", "content": "Turn off the kitchen lights."}]
    single = ev.request_messages(by_id["ha_lights-01"])
    assert [m["role"] for m in single] == ["system", "user"]
    assert single[0]["content"] == HA_PROMPT.read_text()
    turns = ev.request_messages(by_id["ha_multiturn-03"])
    assert [m["role"] for m in turns] == ["system", "user", "assistant", "tool", "assistant",
                                          "user"]
    assert turns[-1]["content"] == "Lock it, please."


# ----- scoring ----------------------------------------------------------------------
def ha_case(expected: dict[str, Any], alternatives: list[dict[str, Any]] | None = None,
            accept: dict[str, list[Any]] | None = None, name: str = "HassTurnOn") -> ev.Case:
    return ev.Case(id="t", category="ha_test", prompt="p", tools=[name],
                   expected={"name": name, "arguments": expected},
                   alternatives=alternatives or [], accept=accept or {})


KITCHEN = ha_case({"name": "Kitchen Light", "domain": ["light"]},
                  [{"name": "Kitchen Light"}, {"name": "Kitchen Light", "area": "Kitchen"}],
                  {"name": ["Kitchen Ceiling Light"]})


@pytest.mark.parametrize("got", [
    {"name": "Kitchen Light", "domain": ["light"]},
    {"name": "kitchen light.", "domain": ["Light"]},  # case and end punctuation
    {"name": "Kitchen Light"},  # an alternative
    {"name": "Kitchen Light", "area": "kitchen"},
    {"name": "Kitchen Ceiling Light", "domain": ["light"]},  # an accepted alias
    {"name": "Kitchen Ceiling Light"},  # accept applies to the alternatives too
])
def test_exact(got: dict[str, Any]) -> None:
    assert ev.arguments_match(got, KITCHEN)


@pytest.mark.parametrize("got", [
    {"name": "Kitchen Counter Lights", "domain": ["light"]},  # another device
    {"name": "Kitchen Light", "domain": ["switch"]},
    {"name": "Kitchen Light", "domain": ["light", "switch"]},
    {"name": "Kitchen Light", "domain": "light"},  # a string is not the list the schema says
    {"name": "Kitchen Light", "area": "Living Room"},
    {"name": "Kitchen Light", "domain": ["light"], "area": ""},  # HA refuses an empty area
    {"area": "Kitchen", "domain": ["light"]},  # both kitchen lights: not listed
    {"domain": ["light"]},
    {},
])
def test_near_misses_are_not_exact(got: dict[str, Any]) -> None:
    assert not ev.arguments_match(got, KITCHEN)


def test_lists_of_strings_compare_as_sets() -> None:
    case = ha_case({"area": "Garage", "domain": ["cover", "light"]})
    assert ev.arguments_match({"area": "garage", "domain": ["light", "cover"]}, case)
    assert ev.arguments_match({"area": "Garage", "domain": ["Cover", "light", "light"]}, case)
    assert not ev.arguments_match({"area": "Garage", "domain": ["cover"]}, case)


def test_numbers_compare_numerically_and_wrong_values_miss() -> None:
    case = ha_case({"name": "Bedroom Light", "brightness": 30}, name="HassLightSet")
    assert ev.arguments_match({"name": "Bedroom Light", "brightness": 30.0}, case)
    assert not ev.arguments_match({"name": "Bedroom Light", "brightness": 3}, case)
    assert not ev.arguments_match({"name": "Bedroom Light", "brightness": "30"}, case)


def test_the_old_scoring_is_unchanged(cases: list[ev.Case]) -> None:
    music = next(c for c in cases if c.id == "music-01")
    assert ev.arguments_match({"query": "Jazz Music", "area": "kitchen"}, music)
    assert not ev.arguments_match({"query": "blues", "area": "kitchen"}, music)
    assert not ev.arguments_match({"query": "jazz"}, music)


def test_score_flags(catalog: dict[str, dict[str, Any]]) -> None:
    def outcome(name: str, args: dict[str, Any]) -> ev.Outcome:
        out = ev.Outcome(case="t", category="ha_test", expected="HassTurnOn")
        message = {"tool_calls": [{"function": {"name": name, "arguments": json.dumps(args)}}]}
        ev.score(KITCHEN, message, catalog, out)
        return out

    right = outcome("HassTurnOn", {"name": "Kitchen Light"})
    assert (right.right_function, right.exact, right.schema_valid) == (True, True, True)
    wrong_fn = outcome("HassTurnOff", {"name": "Kitchen Light", "domain": ["light"]})
    assert (wrong_fn.right_function, wrong_fn.exact) == (False, False)
    bad_schema = outcome("HassTurnOn", {"name": "Kitchen Light", "domain": "light"})
    assert (bad_schema.right_function, bad_schema.schema_valid, bad_schema.exact) == \
        (True, False, False)


# ----- validation of broken cases ---------------------------------------------------------
def write_case(tmp: Path, **fields: Any) -> Path:
    (tmp / "prompt.txt").write_text("You are a voice assistant for Home Assistant.\n")
    base: dict[str, Any] = {"id": "x", "category": "ha_test", "prompt": "Lock it.",
                            "system": "prompt.txt", "tools": ["HassTurnOn", "GetLiveContext"],
                            "expected": {"name": "HassTurnOn",
                                         "arguments": {"name": "Front Door"}}}
    path = tmp / "cases.jsonl"
    path.write_text(json.dumps({**base, **fields}) + "\n")
    return path


def call(name: str, args: dict[str, Any], cid: str = "call_1") -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": cid, "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}]}


GOOD_TURNS = [{"role": "user", "content": "Is the front door locked?"},
              call("GetLiveContext", {}),
              {"role": "tool", "tool_call_id": "call_1", "content": "{\"success\": true}"},
              {"role": "assistant", "content": "It is unlocked."},
              {"role": "user", "content": "Lock it."}]


def test_a_good_conversation_loads(tmp_path: Path, catalog: dict[str, dict[str, Any]]) -> None:
    path = write_case(tmp_path, messages=GOOD_TURNS,
                      alternatives=[{"name": "Front Door", "domain": ["lock"]}])
    [case] = ev.load_cases(path, catalog)
    assert case.messages == GOOD_TURNS
    assert ev.request_messages(case, tmp_path)[0]["role"] == "system"


@pytest.mark.parametrize(("fields", "error"), [
    ({"system": "missing.txt"}, "does not exist"),
    ({"system": "../tools.json"}, "file name"),
    ({"messages": []}, "non-empty"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role must be"),
    ({"messages": [*GOOD_TURNS[:4]]}, "must end with"),
    ({"messages": [GOOD_TURNS[0], call("GetLiveContext", {})]}, "must end with"),
    ({"messages": [GOOD_TURNS[0], call("HassTurnOff", {})]}, "not among the tools offered"),
    ({"messages": [GOOD_TURNS[0], call("NoSuchTool", {})]}, "unknown tool"),
    ({"messages": [GOOD_TURNS[0], call("HassTurnOn", {"domain": "lock"})]},
     "breaks the schema"),
    ({"messages": [GOOD_TURNS[0], call("GetLiveContext", {}),
                   {"role": "tool", "tool_call_id": "call_9", "content": "{}"}]},
     "no pending call"),
    ({"messages": [GOOD_TURNS[0], call("GetLiveContext", {}), GOOD_TURNS[4]]},
     "have no tool message"),
    ({"messages": [{"role": "system", "content": "again"}, GOOD_TURNS[4]]},
     "system message only"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "unexpected keys"),
    ({"alternatives": [{"name": 3}]}, "alternatives[0] breaks the schema"),
    ({"alternatives": [{"name": "front door"}]}, "repeats"),
    ({"accept": {"area": ["Hallway"]}}, "no right answer has"),
    ({"expected": None, "alternatives": [{"name": "Front Door"}]}, "need an expected call"),
    ({"expected": {"name": "HassTurnOn"}}, "`expected` is"),
    ({"extra": 1}, "not a case"),
])
def test_a_broken_case_fails_to_load(tmp_path: Path, catalog: dict[str, dict[str, Any]],
                                     fields: dict[str, Any], error: str) -> None:
    with pytest.raises(BenchError, match=error.replace("[", r"\[").replace("]", r"\]")):
        ev.load_cases(write_case(tmp_path, **fields), catalog)


# ----- the default models -------------------------------------------------------------------
PROFILE = """
server: {default_model: chat}
models:
  - {name: chat, role: fast, path: /m/a}
  - {name: caller, role: tools, path: /m/b, tool_call_parser: hermes}
  - {name: general, role: general, path: /m/c, tool_call_parser: hermes}
  - {name: eyes, role: vision, path: /m/d, tool_call_parser: hermes}
"""


def test_profile_tool_models() -> None:
    loaded = cfg.parse(PROFILE, Path("/x/p.yaml"))
    assert ev.profile_tool_models(loaded) == ["caller", "general"]
    # The real profile, whatever its model names are today.
    cpu = cfg.load(path=cfg.PROFILES_DIR / "cpu.yaml")
    found = ev.profile_tool_models(cpu)
    assert found
    for name in found:
        model = cpu.model(name)
        assert model.tool_call_parser and model.role.value not in {"vision", "embedding"}


def test_served_tool_models() -> None:
    ours = [{"id": "a", "zoe": {"role": "fast"}}, {"id": "b", "zoe": {"role": "tools"}}]
    assert ev.served_tool_models(ours) == ["b"]
    assert ev.served_tool_models([{"id": "x"}, {"id": "y"}]) == ["x", "y"]


def defaults(tmp_path: Path, served: list[dict[str, Any]]) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE)
    args = argparse.Namespace(config=path, profile="cpu")

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"object": "list", "data": served})

    async def go() -> list[str]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await ev.default_models(client, "http://h", args, lambda _: None)

    return asyncio.run(go())


def test_default_models_from_the_profile_then_the_server(tmp_path: Path) -> None:
    every = [{"id": n, "zoe": {"role": "fast"}} for n in ("chat", "caller", "general", "eyes")]
    assert defaults(tmp_path, every) == ["caller", "general"]
    assert defaults(tmp_path, every[:2]) == ["caller"]  # only what the server serves
    other = [{"id": "m1", "zoe": {"role": "fast"}}, {"id": "m2", "zoe": {"role": "tools"}}]
    assert defaults(tmp_path, other) == ["m2"]  # none of the profile's: the server's
    with pytest.raises(BenchError, match="no model to evaluate"):
        defaults(tmp_path, other[:1])


def test_default_model_options() -> None:
    args = ev.parse_args([])
    assert args.model is None and args.profile == "cpu"
    assert args.tool_choice == ["auto", "required"]
    with pytest.raises(SystemExit):
        ev.parse_args(["--profile", "no-such-profile"])


# ----- the report ---------------------------------------------------------------------------
def test_targets() -> None:
    assert against_targets({"right_function": 0.95, "exact": 0.9, "false_calls": 1 / 12}) \
        == "met"
    assert against_targets({"right_function": 0.83, "exact": 0.95, "false_calls": 0.25}) \
        == "missed: right function 12.0 pts short, false calls 16.7 pts over"
    assert against_targets({"right_function": 1.0, "exact": 1.0, "false_calls": None}) == "met"


def test_the_report_splits_the_groups(tmp_path: Path, cases: list[ev.Case]) -> None:
    picked = [c for c in cases if c.id in ("lights-01", "no_tool-01", "ha_lights-01",
                                             "ha_no_tool-01")]
    outcomes = [ev.Outcome(case=c.id, category=c.category,
                           expected=None if c.expected is None else c.expected["name"],
                           latency_s=0.5, prompt_tokens=100 if c.system is None else 3000)
                for c in picked]
    outcomes[2].called, outcomes[2].arguments = "HassTurnOn", '{"name": "Kitchen Light"}'
    outcomes[2].right_function = outcomes[2].exact = outcomes[2].valid_json = True
    run = {"model": "m", "tool_choice": "auto", "summary": ev.summarize(outcomes),
           "groups": ev.summarize_groups(outcomes), "outcomes": [asdict(o) for o in outcomes]}
    result = {"runs": [run], "cases": [asdict(c) for c in picked], "url": "http://h",
              "started_stack": False, "limit": None, "profile": "cpu", "config": None,
              "descriptions": {}, "at": "now", "command": "python -m bench.eval_tools",
              "machine": {"cpu": "c", "logical_cores": 2, "ram_gib": 1.0}}
    out = tmp_path / "tools.md"
    write(result, out)
    text = out.read_text()
    assert "| `m` | `auto` | all (4) |" in text
    assert "| `m` | `auto` | original cases (2) | 0% |" in text
    assert "| `m` | `auto` | Home Assistant cases (2) | 100% |" in text
    assert "| 1,550 |" in text  # p50 prompt tokens of all four
    assert "at most 1 false call in 12 (<= 8.3%)" in text
    assert "missed: right function 95.0 pts short, exact arguments 90.0 pts short" in text


def test_run_case_sends_the_conversation_and_records_prompt_tokens(
        cases: list[ev.Case], catalog: dict[str, dict[str, Any]]) -> None:
    case = next(c for c in cases if c.id == "ha_multiturn-03")
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        arguments = json.dumps({"name": "Front Door", "domain": ["lock"]})
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "HassTurnOn", "arguments": arguments}}]}
        return httpx.Response(200, json={"choices": [{"message": message}],
                                         "usage": {"prompt_tokens": 4321}})

    async def go() -> ev.Outcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await ev.run_case(client, "http://h/v1/chat/completions", "m", "auto",
                                     case, catalog, 64)

    out = asyncio.run(go())
    assert (out.exact, out.prompt_tokens, out.error) == (True, 4321, "")
    [body] = sent
    assert body["messages"] == ev.request_messages(case)
    assert [t["function"]["name"] for t in body["tools"]] == case.tools
