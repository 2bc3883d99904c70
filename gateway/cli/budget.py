"""`zoe-vllm check-config`'s memory budget: options, and the report it prints."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from shared import budget, platform
from shared.config import LoadedConfig

KIND_OF_PROFILE = {"jetson": "unified", "gpu": "discrete", "cpu": "cpu"}


def budget_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("--device-memory-gib", type=float,
                       help="the device's memory (default: detected — NVML's total on a GPU, "
                       "MemTotal of /proc/meminfo on a Jetson or a CPU box)")
    check.add_argument("--memory", choices=["unified", "discrete", "cpu"],
                       help="memory kind (default: from the profile name, else detected)")
    for flag in ("--cuda-overhead-gib", "--host-overhead-gib", "--reserve-gib"):
        check.add_argument(flag, type=float, help="override this estimate (shared/budget.py)")
    check.add_argument("--no-budget", action="store_true", help="only validate the file")


def check_budget(args: argparse.Namespace, cfg: LoadedConfig) -> int:
    """Refuse (exit 1) a profile whose models do not fit the device's memory."""
    kind = budget.MemoryKind(args.memory or KIND_OF_PROFILE.get(cfg.source.stem)
                             or KIND_OF_PROFILE[platform.detect_profile().profile])
    if args.device_memory_gib is not None:
        device_gib, where = args.device_memory_gib, "--device-memory-gib"
    else:
        mem = platform.device_memory()
        if mem is None:
            print("zoe-vllm: cannot read the device's memory; pass --device-memory-gib",
                  file=sys.stderr)
            return 1
        device_gib, where = mem.total_gib, mem.source
    overheads = budget.OVERHEADS[kind]
    for field, value in (("cuda_gib", args.cuda_overhead_gib),
                         ("host_gib", args.host_overhead_gib), ("reserve_gib", args.reserve_gib)):
        if value is not None:
            overheads = replace(overheads, **{field: value})
    try:
        report = budget.check(cfg, device_gib, kind, overheads)
    except budget.BudgetError as exc:
        print(f"zoe-vllm: {exc}", file=sys.stderr)
        return 1
    print(f"device memory {device_gib:.2f} GiB from {where}")
    print("\n".join(budget.format_report(report)))
    for problem in report.problems:
        print(f"zoe-vllm: {cfg.source.name} does not fit: {problem}", file=sys.stderr)
    return 0 if report.ok else 1
