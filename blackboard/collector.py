"""Pausing Python's garbage collector while a log is caught up.

Catching up a log (the projector at start, a scheduler taking the lead)
makes millions of objects that live on (the fold) and frees the rest by
reference counting; the collector's full passes over the growing fold found
nothing to free and cost a quarter of the projector's catch-up (30.8-34.2k
-> 40.1-40.3k events/s through NATS, 100,000 events). So the collector is
paused while any catch-up runs, and when the last ends what survived it is
frozen (``gc.freeze``: the fold is not scanned again by later passes) and
collection resumes for what comes after. The cost: a reference cycle made
during a catch-up is never freed (the process makes few: no exceptions are
kept, no closures over themselves).
"""

from __future__ import annotations

import gc

__all__ = ["catching_up", "caught_up"]

_paused = 0
_was_enabled = True


def catching_up() -> None:
    """Pause collection until the matching :func:`caught_up`."""
    global _paused, _was_enabled
    if _paused == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _paused += 1


def caught_up() -> None:
    """End one catch-up; the last one freezes what survived and resumes."""
    global _paused
    if _paused == 0:
        return
    _paused -= 1
    if _paused == 0:
        gc.freeze()
        if _was_enabled:
            gc.enable()
