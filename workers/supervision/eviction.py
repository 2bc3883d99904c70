"""Which models to stop and which to bring back: one pure function, no processes.

Every reason a model leaves memory, or comes back, is decided here and nowhere
else, as llama-swap's ``Swapper`` does:

- **swap out**: an on-demand model about to load displaces the model its
  ``swap_out`` names, if that one is loaded;
- **idle unload**: a model with an idle limit (an on-demand model's
  ``idle_unload_s``, or the ``keep_alive`` of the latest Ollama request for it)
  that has been unused that long, with nothing in flight;
- **restore**: a displaced model comes back once the model that displaced it is
  gone (unloaded when idle, crashed, or failed to load).

The supervisor describes the models (:class:`Resident`), calls :func:`plan`, and
carries the :class:`Plan` out; tests call :func:`plan` with a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resident:
    """One model as eviction sees it."""

    name: str
    alive: bool  # a process exists, or is being started (it may hold memory)
    busy: bool = False  # requests in flight
    idle_s: float = 0.0  # since its last use, or since it became ready
    idle_limit_s: float | None = None  # unloaded after this long unused; None: stays
    limit_from: str = "idle_unload_s"  # what set the limit: "keep_alive" or "idle_unload_s"
    swap_out: str | None = None  # the model this one displaces when it loads


@dataclass(frozen=True)
class Stop:
    model: str
    reason: str
    unloaded: bool = False  # by a client (keep_alive): its next request loads it again


@dataclass(frozen=True)
class Plan:
    stop: tuple[Stop, ...] = ()
    restore: tuple[str, ...] = ()  # displaced models to start again
    displaced: Mapping[str, str] = field(default_factory=dict)  # model -> who displaced it

    @property
    def empty(self) -> bool:
        return not self.stop and not self.restore


def plan(models: Mapping[str, Resident], displaced: Mapping[str, str],
         target: str | None = None) -> Plan:
    """What to stop and restore now. ``target``: a model about to be loaded (None: a
    periodic check). ``displaced``: who displaced whom so far; the plan carries the
    new map."""
    stops: dict[str, Stop] = {}
    moved = dict(displaced)
    if target is not None:
        victim = models[target].swap_out
        if victim is not None and models[victim].alive:
            stops[victim] = Stop(victim, f"swapped out for {target}")
            # Only a model that was loaded is given back: one that was not stays as it was.
            moved[victim] = target
    for m in models.values():
        if m.name == target or m.name in stops or not m.alive or m.busy:
            continue
        if m.idle_limit_s is not None and m.idle_s >= m.idle_limit_s:
            reason = "keep_alive 0" if m.limit_from == "keep_alive" and m.idle_limit_s == 0 \
                else f"idle for {m.idle_limit_s:g}s ({m.limit_from})"
            stops[m.name] = Stop(m.name, reason, unloaded=m.limit_from == "keep_alive")
    restore = []
    for victim, by in list(moved.items()):
        if by == target:
            continue
        gone = not models[by].alive or by in stops
        if gone:
            del moved[victim]
            restore.append(victim)
    return Plan(stop=tuple(stops.values()), restore=tuple(restore), displaced=moved)
