"""Supervision, in the main process (never imports vLLM): one slot per model, its process,
lifecycle, eviction, probes, backpressure and backend (a local worker or a remote server)."""
