"""The OpenAI API (``/v1``): its endpoints, checks, formats and error shape."""
