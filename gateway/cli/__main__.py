"""``python -m gateway.cli``: the same command as ``zoe-vllm``."""

import sys

from gateway.cli.main import main

sys.exit(main())
