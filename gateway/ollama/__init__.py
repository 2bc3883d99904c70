"""Ollama's native API (``/api``): translation to OpenAI bodies, NDJSON answers, its errors."""
