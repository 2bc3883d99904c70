"""Plugins that vLLM loads into its own serving layer, by flag (``--tool-parser-plugin``).

They are written against vLLM 0.32's plugin interfaces, which the workers' compat layer
(``workers.engine.vllm_compat``) does not bridge: vLLM 0.14 has no end-of-stream hook for a tool
parser. So only the CPU profiles name them; the Jetson and GPU profiles use vLLM's built-in
parsers, and ``tests/unit/test_config.py`` keeps it that way.
"""
