"""Keep Python's cyclic garbage collector off the hub's back at scale.

A controller holding 200k desired flows (and their matches and actions) has millions of
objects; a full (generation 2) collection walks every one of them and holds the single
eventlet hub for most of a second (658 ms measured at 10k hosts on 3 switches), at a moment
CPython chooses.  Almost all of that state is acyclic and long-lived: it is freed by
reference counting when replaced, never by the cyclic collector.  So after a bulk change
the survivors are frozen (``gc.freeze``, what Instagram does after start-up): later
collections walk only what was made since, and frozen objects are still freed by reference
counting when the state that holds them is replaced.  A cycle frozen while garbage stays
(only the young generations are collected first), which is the price; ``frozen`` in
``/v1/health`` shows the count, as of the last freeze (``gc.get_freeze_count`` walks the
frozen list: 100-300 ms of hub with millions of objects, so it is not asked on every read).
"""

from __future__ import annotations

import gc
import time

#: desired entries (flows + groups + meters) one apply must hand over to count as bulk
BULK_ENTRIES = 5000


class HeapGuard:
    """Freezes the heap after bulk changes and times the collector's full passes."""

    def __init__(self):
        self.freezes = 0
        self.frozen = gc.get_freeze_count()
        self.gen2 = 0
        self.gen2_max_ms = 0.0
        self.gen2_last_ms = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0:
            ms = (time.perf_counter() - self._t0) * 1000
            self.gen2 += 1
            self.gen2_last_ms = ms
            self.gen2_max_ms = max(self.gen2_max_ms, ms)
            self._t0 = 0.0

    def after_bulk(self, entries: int) -> bool:
        """``entries`` desired entries were just handed over: freeze what survives, if that is bulk."""
        if entries < BULK_ENTRIES:
            return False
        gc.collect(1)  # young garbage goes first (cheap: generations 0 and 1 only)
        gc.freeze()
        self.frozen = gc.get_freeze_count()  # (one walk per bulk change, never per /v1/health)
        self.freezes += 1
        return True

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def json(self) -> dict:
        return {"frozen": self.frozen, "freezes": self.freezes, "full_collections": self.gen2,
                "full_collection_ms": {"last": round(self.gen2_last_ms, 1), "max": round(self.gen2_max_ms, 1)}}
