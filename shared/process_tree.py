"""A process and everything it started.

A worker is more than one process: vLLM's front end, its EngineCore child and
the engine's own workers. Memory and CPU are reported for the whole tree.
"""

from __future__ import annotations

import contextlib

import psutil


def members(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants; empty if ``pid`` is gone or not ours to read."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def tree_rss(pid: int | None) -> int | None:
    """Resident bytes of ``pid`` and its descendants; None if there is no such process."""
    procs = members(pid) if pid is not None else []
    if not procs:
        return None
    total = 0
    for proc in procs:
        # A child may exit between the listing and the reading.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total
