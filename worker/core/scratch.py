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
    """This thread's buffer ``name``: a C-contiguous matrix of at least ``rows`` rows and
    ``columns + 1`` columns, every element ``fill``; None when it would exceed
    :data:`MAX_SCRATCH_BYTES`. Address its cells with :func:`cells`. The caller must restore
    ``fill`` wherever it writes before it returns."""
    itemsize = np.dtype(dtype).itemsize
    if rows * (columns + 1) * itemsize > MAX_SCRATCH_BYTES:
        return None
    buffers: dict[str, np.ndarray] = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if (
        buffer is None
        or buffer.dtype != np.dtype(dtype)
        or buffer.shape[0] < rows
        or buffer.shape[1] < columns + 1
    ):
        shape = (_capacity(rows), _capacity(columns + 1))
        if shape[0] * shape[1] * itemsize > MAX_SCRATCH_BYTES:
            shape = (rows, columns + 1)
        buffer = np.full(shape, fill, dtype=dtype)
        buffers[name] = buffer
    return buffer


def cells(buffer: np.ndarray, values: np.ndarray, columns: int) -> np.ndarray:
    """Flat indices into ``buffer`` (``buffer.reshape(-1)``) of the cells (row ``i``, column
    ``values[i, ...]``), for values in ``0 .. columns - 1`` or ``-1`` (padding). A ``-1`` of row
    ``i`` lands on a cell of its own that no value uses (the last column of the row before it;
    for row 0 the buffer's last cell), so padding matches padding of the same row only, as in
    a comparison of the values themselves. Flat indices, because ``np.minimum.at`` and fancy
    indexing are several times faster on one index array than on a (rows, columns) pair.

    Raises:
        IndexError: a value outside ``-1 .. columns - 1``.
    """
    if values.size and (int(values.min()) < -1 or int(values.max()) >= columns):
        raise IndexError(
            f"values {int(values.min())}..{int(values.max())} outside -1..{columns - 1}"
        )
    shape = (values.shape[0],) + (1,) * (values.ndim - 1)
    rows = np.arange(values.shape[0], dtype=np.intp).reshape(shape) * buffer.shape[1]
    flat: np.ndarray = rows + values
    return flat
