"""The ``zoe-vllm`` command."""
