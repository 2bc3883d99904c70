"""Restart policy for crashed workers: a small pure class, no processes involved."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    """Exit times in; "restart after N seconds" or "give up" (None) out.

    Each crash within ``window_s`` of the previous ones doubles the delay,
    from ``base_s`` up to ``max_s``. ``max_fast_failures`` crashes inside the
    window mean the worker cannot stay up: give up and report FAILED.
    """

    base_s: float = 1.0
    max_s: float = 30.0
    window_s: float = 120.0
    max_fast_failures: int = 5
    _exits: deque[float] = field(default_factory=deque)

    def on_exit(self, now: float) -> float | None:
        self._exits.append(now)
        while self._exits and now - self._exits[0] > self.window_s:
            self._exits.popleft()
        recent = len(self._exits)
        if recent >= self.max_fast_failures:
            return None
        return float(min(self.max_s, self.base_s * 2 ** (recent - 1)))

    def reset(self) -> None:
        self._exits.clear()

    @property
    def recent_failures(self) -> int:
        return len(self._exits)
