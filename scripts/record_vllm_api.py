"""Record, from a vLLM wheel's Python sources, the API the workers' compat layer relies on.

    pip download vllm==0.14.0 --no-deps -d /tmp/vllm014
    python scripts/record_vllm_api.py /tmp/vllm014/vllm-0.14.0-*.whl \\
        > tests/unit/data/vllm_0_14_api.json

Nothing is imported from the wheel: its sources are parsed (``ast``), so any
machine can record any vLLM, and tests/unit/test_vllm_compat.py can check
``workers/vllm_compat.py``'s fallbacks against a vLLM that is not installed.
Recorded: each module the compat layer names (its top-level names, or null
where the module does not exist), a few classes (bases, members, abstract
methods), the parameter names of the functions the workers call or implement,
the ``state.<name>`` attributes ``init_app_state`` sets, and the option strings
of the ``vllm serve`` parser (literal ``add_argument`` flags plus the flags
vLLM derives from its frontend dataclass's fields).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.engine.vllm_compat import PLACES  # noqa: E402  (after the path insert)

# module:Class.member, the callables whose parameters the workers depend on.
SIGNATURES = [
    "vllm.v1.metrics.loggers:StatLoggerBase.__init__",
    "vllm.v1.metrics.loggers:StatLoggerBase.record",
    "vllm.v1.engine.async_llm:AsyncLLM.from_vllm_config",
    "vllm.v1.engine.async_llm:AsyncLLM.abort",
    "vllm.v1.engine.async_llm:AsyncLLM.reset_mm_cache",
    "vllm.v1.engine.async_llm:AsyncLLM.get_supported_tasks",
    "vllm.v1.engine.async_llm:AsyncLLM.shutdown",
    "vllm.engine.arg_utils:AsyncEngineArgs.from_cli_args",
    "vllm.engine.arg_utils:AsyncEngineArgs.create_engine_config",
    "vllm.entrypoints.openai.cli_args:make_arg_parser",
    "vllm.entrypoints.openai.cli_args:validate_parsed_serve_args",
    "vllm.entrypoints.openai.api_server:init_app_state",
    "vllm.entrypoints.openai.serving_engine:OpenAIServing.create_error_response",
    "vllm.entrypoints.openai.serving_chat:OpenAIServingChat.create_chat_completion",
    "vllm.entrypoints.openai.serving_completion:OpenAIServingCompletion.create_completion",
    # A pooling worker's serving object: 0.14.0 has create_embedding (0.32's is called).
    "vllm.entrypoints.pooling.embed.serving:OpenAIServingEmbedding.create_embedding",
    "vllm.entrypoints.openai.serving_responses:OpenAIServingResponses.create_responses",
]
CLASSES = [
    "vllm.v1.metrics.loggers:StatLoggerBase",
    "vllm.v1.engine.async_llm:AsyncLLM",
    "vllm.usage.usage_lib:UsageContext",
    "vllm.entrypoints.openai.protocol:ErrorResponse",
    "vllm.entrypoints.openai.protocol:ErrorInfo",
    "vllm.entrypoints.openai.protocol:ChatCompletionRequest",
    "vllm.entrypoints.openai.protocol:CompletionRequest",
    "vllm.entrypoints.openai.serving_engine:OpenAIServing",
    "vllm.entrypoints.openai.serving_chat:OpenAIServingChat",
    "vllm.entrypoints.openai.serving_completion:OpenAIServingCompletion",
    "vllm.entrypoints.openai.protocol:ResponsesRequest",
    "vllm.entrypoints.pooling.embed.protocol:EmbeddingCompletionRequest",
    "vllm.entrypoints.pooling.embed.serving:EmbeddingMixin",
    "vllm.entrypoints.pooling.embed.serving:OpenAIServingEmbedding",
    "vllm.entrypoints.openai.serving_responses:OpenAIServingResponses",
]
STATE_WRITERS = ["vllm.entrypoints.openai.api_server:init_app_state"]
# Modules whose add_argument calls build `vllm serve`'s parser, with the dataclasses
# whose every field becomes a --flag there (FrontendArgs.add_cli_args loops over them).
SERVE_PARSER = {"vllm.entrypoints.openai.cli_args": ["FrontendArgs"],
                "vllm.engine.arg_utils": []}


class Wheel:
    """A wheel (zip) or an unpacked tree holding ``vllm/``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        self._trees: dict[str, ast.Module | None] = {}

    def read(self, rel: str) -> str | None:
        if self.zip is not None:
            try:
                return self.zip.read(rel).decode()
            except KeyError:
                return None
        file = self.path / rel
        return file.read_text() if file.is_file() else None

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            base = module.replace(".", "/")
            text = self.read(base + ".py")
            if text is None:
                text = self.read(base + "/__init__.py")
            self._trees[module] = None if text is None else ast.parse(text)
        return self._trees[module]


def _runtime_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Top-level statements that run at import (not ``if TYPE_CHECKING:`` bodies)."""
    for node in body:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                yield from _runtime_statements(node.orelse)
            else:
                yield from _runtime_statements(node.body)
                yield from _runtime_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody,
                         *(h.body for h in node.handlers)):
                yield from _runtime_statements(part)
        else:
            yield node


def _targets(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"]
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign | ast.AugAssign):
        targets = [node.target]
    names = []
    for target in targets:
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                names.append(sub.id)
    return names


def top_level_names(tree: ast.Module) -> list[str]:
    return sorted({n for node in _runtime_statements(tree.body) for n in _targets(node)})


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in _runtime_statements(tree.body) if isinstance(n, ast.ClassDef)}


def _member_defs(cls: ast.ClassDef) -> dict[str, ast.stmt]:
    out: dict[str, ast.stmt] = {}
    for node in cls.body:
        for name in _targets(node):
            out[name] = node
    return out


def _self_attributes(cls: ast.ClassDef) -> set[str]:
    """``self.<name> = ...`` in ``__init__`` (instance attributes)."""
    init = _member_defs(cls).get("__init__")
    names: set[str] = set()
    if init is not None:
        for node in ast.walk(init):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def _find_member(wheel: Wheel, module: str, cls_name: str, member: str) -> ast.stmt | None:
    """``cls_name.member`` in ``module``, following bases defined in the same module."""
    tree = wheel.tree(module)
    classes = _classes(tree) if tree else {}
    todo = [cls_name]
    while todo:
        cls = classes.get(todo.pop(0))
        if cls is None:
            continue
        found = _member_defs(cls).get(member)
        if found is not None:
            return found
        todo += [ast.unparse(b) for b in cls.bases]
    return None


def _parameters(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = func.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [p.arg for p in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names


def _function(wheel: Wheel, spec: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    module, qualname = spec.split(":")
    tree = wheel.tree(module)
    if tree is None:
        return None
    if "." in qualname:
        cls, member = qualname.split(".", 1)
        node = _find_member(wheel, module, cls, member)
    else:
        node = next((n for n in _runtime_statements(tree.body)
                     if qualname in _targets(n)), None)
    return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None


def _is_abstract(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
        ast.unparse(d).endswith("abstractmethod") for d in node.decorator_list)


def record_class(wheel: Wheel, spec: str) -> dict[str, list[str]] | None:
    module, name = spec.split(":")
    tree = wheel.tree(module)
    cls = _classes(tree).get(name) if tree else None
    if cls is None:
        return None
    members = _member_defs(cls)
    return {"bases": [ast.unparse(b) for b in cls.bases],
            "members": sorted(set(members) | _self_attributes(cls)),
            "abstract": sorted(n for n, node in members.items() if _is_abstract(node))}


def state_attributes(wheel: Wheel, spec: str) -> list[str] | None:
    func = _function(wheel, spec)
    if func is None:
        return None
    return sorted({node.attr for node in ast.walk(func)
                   if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                   and isinstance(node.value, ast.Name) and node.value.id == "state"})


def serve_options(wheel: Wheel) -> list[str]:
    flags: set[str] = set()
    for module, dataclasses in SERVE_PARSER.items():
        tree = wheel.tree(module)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "add_argument":
                flags |= {a.value for a in node.args if isinstance(a, ast.Constant)
                          and isinstance(a.value, str) and a.value.startswith("-")}
        classes = _classes(tree)
        for name in dataclasses:
            for stmt in classes[name].body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    flags.add("--" + stmt.target.id.replace("_", "-"))
    return sorted(flags)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record(path: Path) -> dict[str, object]:
    wheel = Wheel(path)
    version_py = wheel.read("vllm/_version.py") or ""
    version = next((line.split("=")[-1].strip().strip("'\"") for line in version_py.splitlines()
                    if line.startswith("__version__ =")), "unknown")
    modules = sorted({m for places in PLACES.values() for m, _ in places} |
                     {s.split(":")[0] for s in SIGNATURES + CLASSES + STATE_WRITERS})
    out: dict[str, object] = {
        "vllm_version": version,
        "source": path.name,
        "sha256": _sha256(path) if path.is_file() else None,
        "recorded_by": "scripts/record_vllm_api.py",
        "modules": {m: (top_level_names(t) if (t := wheel.tree(m)) else None) for m in modules},
        "classes": {c: record_class(wheel, c) for c in CLASSES},
        "signatures": {s: (_parameters(f) if (f := _function(wheel, s)) else None)
                       for s in SIGNATURES},
        "state_attributes": {s: state_attributes(wheel, s) for s in STATE_WRITERS},
        "serve_options": serve_options(wheel),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="a vllm-*.whl, or a folder holding vllm/")
    args = parser.parse_args(argv)
    print(json.dumps(record(args.wheel), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
