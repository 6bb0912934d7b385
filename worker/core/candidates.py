"""Candidate generation: which products the ranker scores for an event.

For each event, proposals in priority order are

1. the products of the user's session, most recent first;
2. the co-visitation neighbours of the current product;
3. the most viewed products of the current product's category (training window);
4. the trending products of that category, then the trending products overall (live counts of
   the serving worker, :class:`worker.core.live_catalogue.Trending`; given as arrays, none in
   training);
5. the most viewed products overall (training window);

duplicates are removed (the first occurrence wins) and the first ``n_candidates`` are kept.
Co-visitation lists are empty for products unseen in training, so for them the candidates are
the recency+category heuristic's own top list (training's ``category_top`` deep, 50, like
``n_candidates``), and the candidates' recall is at least that heuristic's. The
global list is long enough that every event gets exactly ``n_candidates`` distinct candidates
whenever the catalogue has that many products, so a batch is a dense ``(events, n_candidates)``
matrix. The whole batch is computed with numpy at once.
"""

from __future__ import annotations

import numpy as np

from worker.core.catalogue import ProductTables
from worker.core.scratch import cells, scratch

PAD = -1


def generate_candidates(
    tables: ProductTables,
    session_items: np.ndarray,
    current_items: np.ndarray,
    n_candidates: int,
    *,
    category_trending: np.ndarray | None = None,
    trending: np.ndarray | None = None,
) -> np.ndarray:
    """Candidates for a batch of events.

    Args:
        tables: catalogue tables of the serving model (the model's, or the live catalogue).
        session_items: int32 ``(B, L)`` session products, most recent first, ``-1`` padded.
        current_items: int32 ``(B,)`` the product of each event.
        n_candidates: how many candidates per event.
        category_trending: int32 ``(rows of tables.category_top, T)``: per category, its
            trending products, best first, ``-1`` padded; None for none.
        trending: int32 ``(G,)`` the trending products overall, best first, ``-1`` padded; None
            for none.

    Returns:
        int32 ``(B, C)`` candidate product indices, ``C = min(n_candidates, n_products)``;
        the first candidate of each row is the first distinct proposal.
    """
    n_events = current_items.shape[0]
    width = min(n_candidates, tables.n_products)
    if n_events == 0:
        return np.zeros((0, width), dtype=np.int32)
    current_category = tables.category[current_items]
    lists = [
        session_items,
        tables.covis_items[current_items],
        tables.category_top[current_category],
    ]
    if category_trending is not None and category_trending.shape[1]:
        lists.append(category_trending[current_category])
    if trending is not None and trending.shape[0]:
        lists.append(np.broadcast_to(trending, (n_events, trending.shape[0])))
    lists.append(np.broadcast_to(tables.global_top, (n_events, tables.global_top.shape[0])))
    proposals = np.concatenate(lists, axis=1).astype(np.int32, copy=False)
    if proposals.shape[1] < width:  # tiny catalogues or short lists: room for the fill below
        pad = np.full((n_events, width - proposals.shape[1]), PAD, dtype=np.int32)
        proposals = np.concatenate([proposals, pad], axis=1)
    keep = _first_occurrences(proposals, tables.n_products)
    kept = np.cumsum(keep, axis=1, dtype=np.int32)
    if kept[:, -1].min() >= width:  # every row has enough: its first ``width`` kept, in order
        chosen = keep & (kept <= width)
        return proposals[chosen].reshape(n_events, width)
    # Stable sort of "not kept" puts kept proposals first, in their original order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    candidates = np.take_along_axis(proposals, order, axis=1)
    short = ~np.take_along_axis(keep, order, axis=1)
    if short.any():  # only for catalogues smaller than the proposal lists can fill
        candidates = _fill_short_rows(candidates, short, tables.n_products)
    return candidates


def _first_occurrences(proposals: np.ndarray, n_products: int) -> np.ndarray:
    """Boolean mask of the first occurrence of each non-pad value within each row.

    Each (row, product) cell of this thread's scratch (:mod:`worker.core.scratch`) keeps the
    smallest column the product appears in (``np.minimum.at``: one pass, no sort), and a
    proposal is kept when its column is that one (one byte per cell for rows of up to 254
    proposals, two up to 65,534). A scratch over its limit takes the per-row sort instead."""
    n_rows, width = proposals.shape
    dtype = np.uint8 if width < 0xFF else np.uint16
    fill = np.iinfo(dtype).max
    if width >= fill:
        return _first_occurrences_sorted(proposals)
    buffer = scratch(f"first-proposal-{dtype.__name__}", n_rows, n_products, dtype, fill)
    if buffer is None:
        return _first_occurrences_sorted(proposals)
    keys = cells(buffer, proposals, n_products).ravel()  # IndexError before any write
    first = buffer.reshape(-1)
    columns = np.broadcast_to(np.arange(width, dtype=dtype), (n_rows, width)).ravel()
    try:
        np.minimum.at(first, keys, columns)
        keep: np.ndarray = (first[keys] == columns).reshape(n_rows, width)
    finally:
        first[keys] = fill
    keep &= proposals != PAD
    return keep


def _first_occurrences_sorted(proposals: np.ndarray) -> np.ndarray:
    """:func:`_first_occurrences` by a stable sort of each row (any catalogue size)."""
    order = np.argsort(proposals, axis=1, kind="stable")
    sorted_values = np.take_along_axis(proposals, order, axis=1)
    first_sorted = np.ones_like(sorted_values, dtype=bool)
    first_sorted[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    first_sorted &= sorted_values != PAD
    keep = np.empty_like(first_sorted)
    np.put_along_axis(keep, order, first_sorted, axis=1)
    return keep


def _fill_short_rows(candidates: np.ndarray, short: np.ndarray, n_products: int) -> np.ndarray:
    out: np.ndarray = candidates.copy()  # numpy's stubs type copy() of a bare ndarray as Any
    for row in np.flatnonzero(short.any(axis=1)):
        have = set(out[row][~short[row]].tolist())
        fill = [p for p in range(n_products) if p not in have][: int(short[row].sum())]
        out[row][short[row]] = fill
    return out
