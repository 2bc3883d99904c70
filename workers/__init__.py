"""Model workers: supervised from the main process, run as one vLLM process per model."""
