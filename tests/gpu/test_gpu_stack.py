"""The GPU path: the real stack with a CUDA vLLM worker answers one chat.

Runs tests/gpu/check_gpu_stack.py; skipped where there is no NVIDIA GPU or no
CUDA build of vLLM (every CPU-only machine, including CI).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu.check_gpu_stack import SKIP, missing

SCRIPT = Path(__file__).with_name("check_gpu_stack.py")
REASON = missing()


@pytest.mark.skipif(REASON is not None, reason=f"GPU check: {REASON}")
def test_gpu_stack_serves_one_chat() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--timeout", "900"],
                          capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout


def test_check_script_skips_with_a_reason_where_it_cannot_run() -> None:
    if REASON is None:
        pytest.skip("this machine has a GPU and vLLM: the real check above runs instead")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == SKIP
    assert done.stdout.strip() == f"SKIP: {REASON}"
