"""Per-thread scratch matrices kept from one micro-batch to the next.

The fast candidate and feature paths index a ``(events, products)`` matrix by (row, product) to
find, in one lookup, which candidate a product is or the first column it was proposed in.
Allocating that matrix per batch would touch fresh pages every time; instead each thread keeps
one buffer per purpose, every element at its fill value between calls, and a caller puts the
fill value back wherever it wrote before it returns. Buffers grow (to powers of two), never
shrink, and are never larger than :data:`MAX_SCRATCH_BYTES`: past it, callers take their
broadcast paths.
"""

from __future__ import annotations

import threading

import numpy as np

#: The most memory one scratch buffer may hold (a batch of 500 events: catalogues up to about
#: 67,000 products at one byte per cell).
MAX_SCRATCH_BYTES = 32 << 20

_local = threading.local()


def _capacity(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def scratch(name: str, rows: int, columns: int, dtype: type, fill: int) -> np.ndarray | None:
    """A ``(rows, columns)`` view of this thread's buffer ``name``, every element ``fill``; None
    when it would exceed :data:`MAX_SCRATCH_BYTES`. Column ``-1`` of the view is column
    ``columns - 1``. The caller must restore ``fill`` wherever it writes before it returns."""
    itemsize = np.dtype(dtype).itemsize
    if rows * columns * itemsize > MAX_SCRATCH_BYTES:
        return None
    buffers: dict[str, np.ndarray] = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if (
        buffer is None
        or buffer.dtype != np.dtype(dtype)
        or buffer.shape[0] < rows
        or buffer.shape[1] < columns
    ):
        shape = (_capacity(rows), _capacity(columns))
        if shape[0] * shape[1] * itemsize > MAX_SCRATCH_BYTES:
            shape = (rows, columns)
        buffer = np.full(shape, fill, dtype=dtype)
        buffers[name] = buffer
    return buffer[:rows, :columns]
