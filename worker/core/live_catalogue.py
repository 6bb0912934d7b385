"""The serving catalogue: the model's catalogue, open to the products the model does not know,
and the live trending counts that make those products candidates without a retrain.

An event on a product the model does not know is a cold start, not an error: the product gets an
index of its own and is served like any other.

Indices
    The model's products keep their indices ``0 .. P-1`` (:class:`CatalogueTables` is never
    changed). Products the model does not know get ``P .. P+U-1`` in a bounded table of
    ``capacity`` (``U``) slots, handed out in order; when every slot is taken, the product seen
    least recently (by an event or a restored session) is evicted and its slot reused.

Arrays
    :class:`LiveCatalogue` has :class:`CatalogueTables`' field names (so
    :func:`~worker.core.candidates.generate_candidates` and
    :func:`~worker.core.features.build_features` read it unchanged), extended to ``P + U`` rows
    allocated once (zero pages: a row costs memory only once a product takes it) and filled as
    products arrive; :attr:`LiveCatalogue.n_products` is ``P`` plus the slots handed out so far.
    Category arrays have one more row, the "unknown category" (index ``C``): its top list is
    empty and it never has trending products.

Neutral values
    A product the model does not know gets exactly what training
    (``worker.apps.train.build_tables``) gives a catalogue product that had no views in the
    training window -- training sees such products (catalogue products nobody viewed in the
    window), so the model has learnt what these values mean (including that, in the window
    they are counted in, such a product is never the one chosen, which keeps new products low
    in its ranking unless the session speaks for them): ``log_pop`` 0; ``cart_rate``
    (0 + 0.1) / (0 + 10); ``global_rank`` log1p(number of viewed products), the first rank after
    every viewed product; ``category_rank`` log1p(number of viewed products of its category),
    the first rank after them (0 in the unknown category, which has none); no co-visitation
    neighbours. (Training breaks ties among unviewed products by catalogue index, so it is the
    rank the first unviewed product of the catalogue, or of the category, gets.) Its category is
    the index of the event's ``category_id`` when the model knows that category, else the
    unknown category; its ``log_price`` is log1p of the event's ``price``, 0 when unknown (as
    training does); the latest event that names a category or a price wins.

Eviction
    A session may still hold the index of an evicted product (sessions keep indices). After the
    slot is reused, that history entry names the new product: its features and the changelog
    record the new product instead. Indices always stay in range, so nothing fails; it takes
    more distinct new products within a session's lifetime (30 minutes of inactivity, an hour
    of idle TTL) than the capacity (100,000 by default), so it is rare. Keep the capacity well
    above a micro-batch's size: products of one batch are then never evicted within it.

Trending
    :class:`Trending`: per product (known or new), a count of views and add-to-carts that
    halves every ``half_life_ms`` of event time, updated from every batch, and the top products
    overall and per category, proposed by ``generate_candidates`` after the category's top
    list. The table is rebuilt from nothing when the worker starts (it warms up over a few
    half-lives); a restart forgets new products until events name them again.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from worker.core.catalogue import CatalogueTables
from worker.core.records import ADD_TO_CART, VIEW

DEFAULT_CAPACITY = 100_000
DEFAULT_HALF_LIFE_MS = 3_600_000
#: Trending products proposed per event: overall, and of the event's category.
TRENDING_TOP = 20
TRENDING_CATEGORY_TOP = 10
#: ``cart_rate`` of a product without views or carts: (0 + 0.1) / (0 + 10), the smoothing of
#: ``worker.apps.train.build_tables`` (a unit test holds the two together).
NEUTRAL_CART_RATE = np.float32((0 + 0.1) / (0 + 10.0))
#: Counts are kept scaled to a reference time (forward decay); past this many half-lives from
#: it they are rescaled to a new one (the order of the products does not change).
_RESCALE_HALF_LIVES = 64.0


class Trending:
    """Exponentially decayed interaction counts of every product, and the top lists.

    A count is stored as the sum over its events of ``2 ** ((t - origin) / half_life)``
    (forward decay): the count decayed to any time is the stored value times one common factor,
    so the products' order changes only when a product gets events. The top lists are therefore
    kept exactly by merging, per batch, the products it counted into the lists of their
    categories (and into the overall list), with numpy over the batch.

    Args:
        size: products (indices ``0 .. size-1``).
        category_rows: rows of the per-category lists; the last one (the unknown category) stays
            empty.
        half_life_ms: event time after which a count has halved.
        top / category_top: length of the overall and per-category lists (0: none).
    """

    def __init__(
        self,
        size: int,
        category_rows: int,
        half_life_ms: float = DEFAULT_HALF_LIFE_MS,
        *,
        top: int = TRENDING_TOP,
        category_top: int = TRENDING_CATEGORY_TOP,
    ) -> None:
        if half_life_ms <= 0:
            raise ValueError(f"half_life_ms must be positive, not {half_life_ms}")
        self.half_life_ms = float(half_life_ms)
        self.counts = np.zeros(size, dtype=np.float64)
        self.overall = np.full(top, -1, dtype=np.int32)
        self.by_category = np.full((category_rows, category_top), -1, dtype=np.int32)
        self._unknown_row = category_rows - 1
        self._origin_ms: int | None = None
        self._latest_ms: int | None = None

    def observe(
        self, items: np.ndarray, types: np.ndarray, times_ms: np.ndarray, category: np.ndarray
    ) -> None:
        """Count a batch's events (views and add-to-carts) and update the top lists.

        Args:
            items: int ``(B,)`` product indices; types: their event types; times_ms: event times.
            category: category index of every product (the catalogue's ``category`` array).
        """
        counted = (types == VIEW) | (types == ADD_TO_CART)
        items, times_ms = items[counted], times_ms[counted]
        if items.size == 0:
            return
        newest = int(times_ms.max())
        if self._origin_ms is None:
            self._origin_ms = newest
        elif newest - self._origin_ms > _RESCALE_HALF_LIVES * self.half_life_ms:
            self.counts *= np.exp2(-(newest - self._origin_ms) / self.half_life_ms)
            self._origin_ms = newest
        self._latest_ms = newest if self._latest_ms is None else max(newest, self._latest_ms)
        weights = np.exp2((times_ms - self._origin_ms) / self.half_life_ms)
        np.add.at(self.counts, items, weights)
        touched = np.unique(items)
        if self.overall.shape[0]:
            held = self.overall[self.overall >= 0]
            best = self._best(np.union1d(held, touched))[: self.overall.shape[0]]
            self.overall[:] = -1
            self.overall[: best.shape[0]] = best
        if self.by_category.shape[1]:
            self._merge_categories(touched, category)

    def _best(self, pool: np.ndarray) -> np.ndarray:
        """``pool`` by count, highest first; equal counts by index."""
        return pool[np.lexsort((pool, -self.counts[pool]))]

    def _merge_categories(self, touched: np.ndarray, category: np.ndarray) -> None:
        touched = touched[category[touched] != self._unknown_row]
        if touched.size == 0:
            return
        rows = np.unique(category[touched])
        pool = np.concatenate([self.by_category[rows].ravel(), touched])
        pool = np.unique(pool[pool >= 0])
        pool_category = category[pool]
        pool = pool[np.isin(pool_category, rows)]  # a product listed under another category
        pool_category = category[pool]
        order = np.lexsort((pool, -self.counts[pool], pool_category))
        pool, pool_category = pool[order], pool_category[order]
        rank = np.arange(pool.shape[0]) - np.searchsorted(pool_category, pool_category)
        kept = rank < self.by_category.shape[1]
        self.by_category[rows] = -1
        self.by_category[pool_category[kept], rank[kept]] = pool[kept]

    def forget(self, item: int, category: int) -> None:
        """The product left the catalogue (its slot is reused): no count, in no list."""
        self.counts[item] = 0.0
        self.overall[self.overall == item] = -1
        self.leave_category(item, category)

    def leave_category(self, item: int, category: int) -> None:
        """The product is no longer of ``category`` (it is listed under its new one once it is
        counted again)."""
        row = self.by_category[category]
        row[row == item] = -1

    def count(self, item: int, at_ms: int) -> float:
        """The product's count decayed to event time ``at_ms``."""
        if self._origin_ms is None:
            return 0.0
        return float(self.counts[item] * np.exp2(-(at_ms - self._origin_ms) / self.half_life_ms))

    def active_products(self, min_count: float = 0.01) -> int:
        """Products whose count, decayed to the newest event counted, is at least ``min_count``
        (with the default, seen within about 6.6 half-lives)."""
        if self._origin_ms is None or self._latest_ms is None:
            return 0
        age = (self._latest_ms - self._origin_ms) / self.half_life_ms
        return int(np.count_nonzero(self.counts >= min_count * 2.0**age))


class LiveCatalogue:
    """The model's catalogue plus up to ``capacity`` products it does not know (see the module
    docstring), and the trending counts over all of them.

    Args:
        tables: the serving model's catalogue (not modified).
        capacity: new products held at most (at least 1).
        half_life_ms: half-life of the trending counts, in event time.
        trending_top / trending_category_top: trending products proposed per event, overall and
            of the event's category (0 and 0: no trending proposals).
    """

    def __init__(
        self,
        tables: CatalogueTables,
        *,
        capacity: int = DEFAULT_CAPACITY,
        half_life_ms: float = DEFAULT_HALF_LIFE_MS,
        trending_top: int = TRENDING_TOP,
        trending_category_top: int = TRENDING_CATEGORY_TOP,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.model = tables
        known = self.n_known = tables.n_products
        self.capacity = capacity
        size = known + capacity
        n_categories = tables.category_ids.shape[0]
        #: Category index of products whose category the model does not know.
        self.unknown_category = n_categories

        def extended(base: np.ndarray) -> np.ndarray:
            out = np.zeros((size, *base.shape[1:]), dtype=base.dtype)
            out[:known] = base
            return out

        ids = tables.index
        self.product_ids = np.empty(size, dtype=object)
        # The index's keys are the catalogue's ids in index order (when they are distinct): the
        # same string objects, not a second copy of them.
        self.product_ids[:known] = list(ids) if len(ids) == known else tables.product_ids.tolist()
        self.category_ids = np.append(tables.category_ids.astype(object), "")
        self.category = extended(tables.category)
        self.log_price = extended(tables.log_price)
        self.log_pop = extended(tables.log_pop)
        self.cart_rate = extended(tables.cart_rate)
        self.global_rank = extended(tables.global_rank)
        self.category_rank = extended(tables.category_rank)
        self.covis_items = extended(tables.covis_items)
        self.covis_scores = extended(tables.covis_scores)
        self.category_top = np.vstack(
            [tables.category_top, np.full((1, tables.category_top.shape[1]), -1, np.int32)]
        ).astype(np.int32)
        self.global_top = tables.global_top

        viewed = tables.log_pop > 0  # log1p(views): 0 exactly when a product had no views
        self._neutral_global_rank = np.float32(np.log1p(np.count_nonzero(viewed)))
        viewed_per_category = np.bincount(tables.category[viewed], minlength=n_categories + 1)
        self._neutral_category_rank = np.log1p(viewed_per_category).astype(np.float32)

        self.trending = Trending(
            size,
            n_categories + 1,
            half_life_ms,
            top=trending_top,
            category_top=trending_category_top,
        )
        self._known = ids
        self._category_index = {c: i for i, c in enumerate(tables.category_ids.tolist())}
        self._slots: OrderedDict[str, int] = OrderedDict()  # new product id -> index, LRU first
        self._next_slot = known
        self._named: dict[int, str] = {}
        #: Products added since the start (a product evicted and seen again counts again).
        self.added_total = 0
        self.evicted_total = 0

    # -- the catalogue -----------------------------------------------------------------------

    @property
    def n_products(self) -> int:
        """Indices in use: ``0 .. n_products-1`` (the model's products and the slots handed out
        so far)."""
        return self._next_slot

    def __len__(self) -> int:
        """New products held."""
        return len(self._slots)

    def known_index(self, product_id: str) -> int | None:
        """The model's index of a product, None if the model does not know it."""
        return self._known.get(product_id)

    def lookup(self, product_id: str) -> int | None:
        """The index of a product if it has one now (nothing is added or touched)."""
        index = self._known.get(product_id)
        return index if index is not None else self._slots.get(product_id)

    def index_of(self, product_id: str) -> int:
        """The index of any product: the model's, or a new product's (added if absent, with
        unknown category and price; a restored session names products this way)."""
        index = self._known.get(product_id)
        return index if index is not None else self.add(product_id)

    def add(
        self, product_id: str, category_id: str | None = None, price: float | None = None
    ) -> int:
        """The index of a product the model does not know: its slot (now the most recently
        seen), or a new one; a category or price given updates it.

        Callers check :meth:`known_index` first (this does not).
        """
        slot = self._slots.get(product_id)
        if slot is None:
            slot = self._assign(product_id)
        else:
            self._slots.move_to_end(product_id)
        if category_id is not None:
            category = self._category_index.get(category_id)
            if category is None:
                category = self.unknown_category
            if category != self.category[slot]:
                self._set_category(slot, category)
        if price is not None:
            self.log_price[slot] = math.log1p(price)
        return slot

    def _assign(self, product_id: str) -> int:
        if self._next_slot < self.n_known + self.capacity:
            slot = self._next_slot
            self._next_slot += 1
        else:
            _, slot = self._slots.popitem(last=False)
            self.evicted_total += 1
            self.trending.forget(slot, int(self.category[slot]))
        self._slots[product_id] = slot
        self.product_ids[slot] = product_id
        self.category[slot] = self.unknown_category
        self.log_price[slot] = 0.0
        self.log_pop[slot] = 0.0
        self.cart_rate[slot] = NEUTRAL_CART_RATE
        self.global_rank[slot] = self._neutral_global_rank
        self.category_rank[slot] = self._neutral_category_rank[self.unknown_category]
        self.covis_items[slot] = -1
        self.covis_scores[slot] = 0.0
        self._named[slot] = product_id
        self.added_total += 1
        return slot

    def _set_category(self, slot: int, category: int) -> None:
        self.trending.leave_category(slot, int(self.category[slot]))
        self.category[slot] = category
        self.category_rank[slot] = self._neutral_category_rank[category]

    def product_id_of(self, index: int) -> str:
        """The id of an index in use."""
        return str(self.product_ids[index])

    def drain_named(self) -> list[tuple[int, str]]:
        """``(index, product_id)`` of every slot given to a product since the last call (for
        writers that cache product ids by index)."""
        named, self._named = self._named, {}
        return list(named.items())

    # -- trending ------------------------------------------------------------------------------

    def observe(self, items: np.ndarray, types: np.ndarray, times_ms: np.ndarray) -> None:
        """Count a batch's events in the trending table (:meth:`Trending.observe`)."""
        self.trending.observe(items, types, times_ms, self.category)

    @property
    def category_trending(self) -> np.ndarray:
        """int32 ``(categories + 1, T)``: per category, its trending products, -1 padded."""
        return self.trending.by_category

    @property
    def trending_overall(self) -> np.ndarray:
        """int32 ``(G,)``: the trending products overall, -1 padded."""
        return self.trending.overall
