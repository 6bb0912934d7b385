"""The worker's use of the cyclic collector (worker.ops.heap): what is alive at set-up is frozen
out of the collections' walk, collections are timed, a retired version's cycles come back."""

from __future__ import annotations

import gc
import weakref

import pytest

from worker.ops.heap import Heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def heap():
    seen: list[tuple[int, float]] = []
    h = Heap(lambda generation, seconds: seen.append((generation, seconds)))
    h.seen = seen  # type: ignore[attr-defined]
    yield h
    h.stop()


def test_set_up_objects_leave_the_collected_generations_and_collections_are_timed(heap):
    held = [{"n": i} for i in range(1000)]
    heap.start()
    assert Heap.frozen() >= 1000
    walked = {id(o) for o in gc.get_objects()}  # generations 0-2: what a full collection walks
    assert not any(id(d) in walked for d in held)
    heap.seen.clear()
    gc.collect(1)
    gc.collect()
    assert [g for g, _ in heap.seen] == [1, 2]
    assert all(s >= 0 for _, s in heap.seen)
    # Objects made after start are collected as usual.
    ref = cycle()
    gc.collect()
    assert ref() is None


def test_a_cycle_frozen_by_a_swap_comes_back_only_with_reclaim(heap):
    heap.start()
    ref = cycle()  # a version's objects, cyclic, alive at the swap
    heap.freeze()
    gc.collect()
    assert ref() is not None  # frozen: no collection sees it (why reclaim exists)
    seconds = heap.reclaim()
    assert ref() is None and seconds >= 0
    assert Heap.frozen() > 0  # what is alive is frozen again


def test_stop_hands_everything_back_and_stops_timing(heap):
    heap.start()
    heap.stop()
    assert Heap.frozen() == 0
    heap.seen.clear()
    gc.collect()
    assert heap.seen == []
    heap.stop()  # twice is harmless
