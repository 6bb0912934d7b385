"""Python's cyclic garbage collector, kept out of the serving loop's tail.

A worker holds about 100,000 container objects that live as long as the process or a model
version does: modules, the model, the catalogue, the serving tables. CPython's full (oldest
generation) collection walks all of them. Under load it runs every few seconds, because objects
that survive one micro-batch into the next count towards its trigger even when reference
counting frees them soon after; each run stops the loop for 30-60 ms on a busy core, and that
is the p99 of a whole latency run (docs/benchmark.md, latency).

:class:`Heap` moves what is alive once the worker is set up into CPython's permanent
generation (:func:`gc.freeze`), which no collection walks; the collector keeps running for
everything the loop allocates afterwards, now in a heap of a few hundred objects. A model
swap freezes the new version's objects the same way. A retired version can leave reference
cycles in the frozen generation (its booster, about 140 objects in a measurement); when a
version is dropped, :meth:`Heap.reclaim` collects the whole heap once and freezes it again, a
pause of one full collection per retired model.

Every collection's pause is observed by a callback (:data:`gc.callbacks`), for
``worker_gc_pause_seconds{generation}``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

#: ``observe(generation, seconds)`` of each collection.
PauseObserver = Callable[[int, float], None]


class Heap:
    """The worker's use of the collector: freeze after set-up and swaps, reclaim after a drop,
    time every collection while it is started."""

    def __init__(
        self, observe: PauseObserver, *, perf_counter: Callable[[], float] = time.perf_counter
    ) -> None:
        self._observe = observe
        self._perf_counter = perf_counter
        self._started_at: float | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = self._perf_counter()
        elif self._started_at is not None:
            self._observe(int(info["generation"]), self._perf_counter() - self._started_at)
            self._started_at = None

    def start(self) -> None:
        """Collect what set-up left behind, freeze the rest, and time every collection from
        now on."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        gc.collect()
        gc.freeze()

    def freeze(self) -> int:
        """Freeze everything alive now (after a swap: the new version's objects). Returns the
        size of the permanent generation."""
        gc.freeze()
        return gc.get_freeze_count()

    def reclaim(self) -> float:
        """Unfreeze, collect the whole heap, freeze again (after a version is dropped); returns
        the seconds it took."""
        started = self._perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        return self._perf_counter() - started

    def stop(self) -> None:
        """Stop timing collections and hand the frozen objects back to the collector."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        gc.unfreeze()

    @staticmethod
    def frozen() -> int:
        """Objects in the permanent generation."""
        return gc.get_freeze_count()
