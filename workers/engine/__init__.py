"""Inside the worker process: vLLM's engine and serving layer, one per model."""
