"""Fail the install if the environment cannot import the engine."""

from __future__ import annotations

import importlib.util
import sys

BROKEN = ("torchvision", "torchaudio", "torchcodec")
present = [name for name in BROKEN if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"check_env: {', '.join(present)} must not be installed beside the CPU torch "
             "(they fail to import and break transformers); pip uninstall them")
import transformers  # noqa: E402
import vllm  # noqa: E402

print(f"check_env: vllm {vllm.__version__}, transformers {transformers.__version__}: OK")
