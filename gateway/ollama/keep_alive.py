"""Ollama's ``keep_alive``: how long a model stays loaded after a request.

``0`` unloads the model once the answer is sent; a duration (``"5m"``, or
seconds) unloads it after that long without requests (OpenAI requests count
as use too); a negative value, or none at all, leaves the model to the
server's own policy: eager models stay loaded, on-demand models leave after
their ``idle_unload_s``. The parsed value goes to the model's slot
(:meth:`Supervisor.keep_alive`); when it runs out is decided with every other
eviction, by :func:`workers.supervision.eviction.plan`. A model unloaded this
way is loaded back by its next request (:meth:`Supervisor.ensure_ready`).
"""

from __future__ import annotations

import contextlib
import math
import re
from datetime import timedelta

FOREVER = math.inf
# Ollama shows a model kept "forever" with an expiry this far out (Go's
# largest time.Duration, about 292 years).
FOREVER_SPAN = timedelta(seconds=(2**63 - 1) / 1e9)
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_keep_alive(value: object) -> float | None:
    """Seconds to stay loaded after a request; ``FOREVER``; None when not given.

    Accepts what Ollama accepts — a number of seconds, or a Go duration such
    as ``"5m"``, ``"1h30m"``, ``"-1"`` — and a bare number in a string.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}: use seconds or a duration like \"5m\"")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"invalid keep_alive {value!r}")
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        seconds: float | None = None
        with contextlib.suppress(ValueError):
            seconds = float(body)
        if seconds is None and body and _PART.sub("", body) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(body))
        if seconds is not None and math.isfinite(seconds):
            return FOREVER if sign < 0 and seconds > 0 else seconds
    raise ValueError(f"invalid keep_alive {value!r}: use a number of seconds or a duration "
                     "like \"5m\" (negative: keep the model loaded)")
