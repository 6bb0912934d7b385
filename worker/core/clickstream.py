"""Deterministic clickstream simulator: browsing events and purchases of a synthetic shop.

Pure core: no Kafka, no wall clock, no I/O. Everything is drawn from seeded numpy Generators, so
the same ``(catalogue, config, seed, start_ms, end_ms)`` always yields the same records.

The defaults are calibrated to ``shared/reference/clickstream-stats.md`` (RetailRocket, Taobao,
REES46, DIGINETICA, OTTO figures). What makes the data *learnable* (a session-aware ranker beats
popularity, but popularity is a fair baseline):

* products have Zipf-like popularity and one category each; each product has a fixed set of
  "similar" neighbours in its category (a latent 1-D ordering), which creates co-visitation signal;
* users are returning shoppers with stable ids, a few preferred categories and an activity level;
  they run several sessions over days;
* within a session the next view is a repeat view, a neighbour of the current product, a popular
  product of the current category, or (on a category switch) a popular product of another one;
* carts favour repeatedly viewed, cheaper, preferred-category and "high-converting" products;
  purchases mostly come from carted or viewed items, the rest from neighbours of viewed items or
  popular items of the session's category, a few minutes after the session's last event.

What makes it as *hard* as a real shop (issue 10; ``worker-dev calibrate`` compares the
heuristics' scores with DIGINETICA's):

* products launched over time: ``new_product_share`` of the catalogue appears during
  ``[launch_origin_ms, launch_origin_ms + launch_span_ms)`` (by default the 2 days of the default
  history, the live stream after it, and some), with early interest that fades
  (``novelty_boost``, ``novelty_decay_ms``); no record shows a product before its launch, so
  the later evaluation slice holds products the training part never saw;
* first-time visitors: ``new_user_share`` of the sessions come from a user id never seen before
  (and never again), the rest from the returning population;
* ``unseen_purchase_share`` of the purchase lines are products not viewed in the session (a
  related product or one of the category; part of them join an order of viewed products), as on
  DIGINETICA (53 %) and Taobao (34 %);
* sessions follow categories (P(next view in the same category) about 0.8).

Three sources of randomness are kept apart on purpose:

* the *product structure* (neighbours, conversion propensity) depends only on the catalogue's
  content, so a model trained on one simulated history transfers to another run on the same
  catalogue;
* the *user population* (preferred categories, activity) depends on ``config.population_seed``,
  so the same ``user_id`` behaves alike in a historical dataset and in a live simulation;
* the *sessions* depend on ``seed`` and on the time chunk they start in (chunks are aligned to a
  fixed grid from the epoch), so the sessions starting in a time range do not depend on the range
  asked for: ``records(a, c)`` holds the same records as ``records(a, b)`` and ``records(b, c)``.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EVENT_TYPES",
    "Catalogue",
    "ClickstreamSimulator",
    "SimulationConfig",
    "make_catalogue",
]

#: ``event_type`` symbols of ``browsing_event.avsc``, indexed by the simulator's type codes.
EVENT_TYPES: tuple[str, str, str] = ("VIEW", "ADD_TO_CART", "REMOVE_FROM_CART")
_VIEW, _CART, _REMOVE = 0, 1, 2

_MS_PER_S = 1000
_MS_PER_DAY = 86_400_000
_U64_MASK = (1 << 64) - 1
_ID_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication mod 2**64 is a bijection


# -- catalogue -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """Products of the shop. Arrays are aligned with ``product_ids``.

    Attributes:
        product_ids: product ids, e.g. ``"p000123"``.
        category_ids: category of each product, e.g. ``"c042"`` (one category per product).
        prices: unit price of each product in the shop currency (float64).
        popularity: float64 sampling weights summing to 1 (Zipf-like).
    """

    product_ids: tuple[str, ...]
    category_ids: tuple[str, ...]
    prices: np.ndarray
    popularity: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.product_ids)
        if n == 0:
            raise ValueError("a catalogue needs at least one product")
        if len(self.category_ids) != n or len(self.prices) != n or len(self.popularity) != n:
            raise ValueError("product_ids, category_ids, prices and popularity must align")
        if len(set(self.product_ids)) != n:
            raise ValueError("product_ids must be unique")

    def __len__(self) -> int:
        return len(self.product_ids)


def make_catalogue(
    n_products: int = 5000,
    n_categories: int = 60,
    seed: int = 0,
    zipf_exponent: float = 0.9,
    zipf_offset: float = 0.0,
) -> Catalogue:
    """Draws a synthetic catalogue.

    Category sizes are lognormal; each product's popularity is Zipf over a random global rank
    (exponent ``zipf_exponent``; with ``zipf_offset`` q > 0 Zipf-Mandelbrot, ``(rank + q) **
    -exponent``: a flatter head, the tail unchanged), so a category's popularity is the sum of
    its products'. Prices are lognormal around a category-dependent median (tens to hundreds of
    currency units).
    """
    if n_products < 1 or n_categories < 1:
        raise ValueError("n_products and n_categories must be >= 1")
    rng = np.random.default_rng([seed, 0xCA7A])
    n_categories = min(n_categories, n_products)
    size_weights = rng.lognormal(0.0, 0.8, n_categories)
    size_weights /= size_weights.sum()
    # Every category gets at least one product; the rest are spread by size.
    category_of = np.concatenate(
        [
            np.arange(n_categories),
            rng.choice(n_categories, n_products - n_categories, p=size_weights),
        ]
    )
    rng.shuffle(category_of)
    rank = rng.permutation(n_products) + 1
    popularity = (rank.astype(np.float64) + zipf_offset) ** -zipf_exponent
    popularity /= popularity.sum()
    category_median_price = rng.lognormal(np.log(60.0), 0.9, n_categories)
    prices = np.round(category_median_price[category_of] * rng.lognormal(0.0, 0.45, n_products), 2)
    prices = np.maximum(prices, 0.99)
    return Catalogue(
        product_ids=tuple(f"p{i:06d}" for i in range(n_products)),
        category_ids=tuple(f"c{c:03d}" for c in category_of),
        prices=prices.astype(np.float64),
        popularity=popularity,
    )


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationConfig:
    """Every behavioural knob, with defaults calibrated to ``clickstream-stats.md``.

    Probabilities are per step (one view) unless said otherwise; durations carry their unit.
    """

    # population
    n_users: int = 20000
    #: about 100 events per Taobao user over 9 days at ~5 events per session -> ~2 sessions/day
    sessions_per_user_per_day: float = 2.0
    #: gamma shape of per-user activity (smaller = more unequal users)
    user_activity_shape: float = 2.0
    #: users have 1..max_preferred_categories favourite categories
    max_preferred_categories: int = 3
    #: P(a session's first category, or a category switch, goes to a preferred category)
    preferred_category_prob: float = 0.7
    #: seed of the user population (kept apart from the session seed, see module doc)
    population_seed: int = 0
    #: relative amplitude of the daily rhythm of session starts (peak at 20:00 UTC); 0 = flat
    diurnal_amplitude: float = 0.5

    # session length (number of VIEW events): 1 + floor(lognormal), capped
    session_views_log_median: float = 0.75
    session_views_log_sigma: float = 1.15
    max_session_views: int = 200

    # next-view mix (per step after the first view)
    repeat_view_prob: float = 0.035
    category_switch_prob: float = 0.3
    #: when staying in the category: P(a neighbour of the current product), else popular item
    #: (0.4 of 20 neighbours: co-visitation and session-kNN as weak as on DIGINETICA, with
    #: ``worker-dev calibrate``; 0.6 of 10 made them as strong as the session's own products)
    neighbour_prob: float = 0.4
    n_neighbours: int = 20
    #: a neighbour is picked with weight popularity ** neighbour_popularity_exponent
    neighbour_popularity_exponent: float = 0.75

    # timing
    view_gap_median_s: float = 52.0
    view_gap_log_sigma: float = 1.45
    #: gaps are clipped below the 30 min inactivity cut that ends a session
    max_gap_s: float = 29 * 60.0
    min_gap_s: float = 1.0
    cart_delay_median_s: float = 15.0
    purchase_delay_median_s: float = 300.0
    purchase_delay_log_sigma: float = 0.8
    min_purchase_delay_s: float = 20.0

    # funnel
    #: base P(ADD_TO_CART | view) before the multipliers below; cart/view lands near 3-5 %
    cart_prob: float = 0.025
    #: multiplier of the cart probability on a repeat view of the item
    cart_repeat_boost: float = 3.0
    #: multiplier for views in one of the user's preferred categories
    cart_preferred_boost: float = 1.5
    #: cart probability scales with (category median price / price) ** cart_price_elasticity
    cart_price_elasticity: float = 0.5
    #: P(a carted item is removed later in the session)
    remove_prob: float = 0.12
    #: P(a carted, not removed item is bought), times the product's conversion propensity
    buy_carted_prob: float = 0.2
    #: per-session P(buying one viewed, not carted item), times (views in session) ** 0.5
    buy_viewed_prob: float = 0.004
    #: per-session P(buying an item not seen in the session), times (views in session) ** 0.5
    buy_unseen_prob: float = 0.005
    #: for an unseen purchase: P(a neighbour of a viewed item), else popular in the category
    unseen_neighbour_prob: float = 0.5
    #: P(quantity > 1) of an order line; extra units are geometric
    multi_quantity_prob: float = 0.07
    #: share of the purchase lines whose product was not viewed in the session (bought from
    #: the category or a related product: a neighbour of a viewed one); DIGINETICA 53 %,
    #: Taobao 34 %, REES46 1 %. None: the per-session ``buy_unseen_prob`` instead.
    unseen_purchase_share: float | None = 0.4
    #: P(an unseen purchase line joins the order of a session that buys a viewed product: an
    #: accessory or a related product), else it is a session of its own (DIGINETICA: 38 %;
    #: 31 % of its buying sessions buy only products they did not view)
    unseen_joins_order_prob: float = 0.4

    # catalogue over time
    #: share of the catalogue launched after ``launch_origin_ms`` (one product per category, its
    #: most popular, is always there from the start); 0 = every product always available
    new_product_share: float = 0.3
    #: new products launch uniformly over ``[launch_origin_ms, launch_origin_ms + launch_span_ms)``
    #: (default: 2026-01-01T00:00Z, the default history's start, and 4 days: the 2 days of
    #: history, the live stream after it, and some); before its launch a product is never shown
    launch_origin_ms: int = 1_767_225_600_000
    launch_span_ms: int = 4 * _MS_PER_DAY
    #: early interest: a new product's sampling weight is its popularity times
    #: ``1 + novelty_boost * exp(-age / novelty_decay_ms)``
    novelty_boost: float = 8.0
    novelty_decay_ms: int = _MS_PER_DAY // 2

    # users over time
    #: share of sessions by first-time visitors (a fresh user id each, seen once), the rest by
    #: the returning population; the total session rate stays ``n_users`` times the per-user one
    new_user_share: float = 0.5

    # engine
    #: sessions are generated per chunk of start times, aligned to a grid from the epoch
    chunk_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise ValueError("n_users must be >= 1")
        if self.chunk_ms < 1:
            raise ValueError("chunk_ms must be >= 1")
        if not 0 <= self.repeat_view_prob + self.category_switch_prob <= 1:
            raise ValueError("repeat_view_prob + category_switch_prob must be within [0, 1]")
        if self.max_session_views < 1 or self.n_neighbours < 1:
            raise ValueError("max_session_views and n_neighbours must be >= 1")
        if self.unseen_purchase_share is not None and not 0 <= self.unseen_purchase_share < 1:
            raise ValueError("unseen_purchase_share must be within [0, 1)")
        if not 0 <= self.new_product_share <= 1 or not 0 <= self.new_user_share <= 1:
            raise ValueError("new_product_share and new_user_share must be within [0, 1]")
        if self.launch_span_ms < 1 or self.novelty_decay_ms < 1 or self.novelty_boost < 0:
            raise ValueError("launch_span_ms, novelty_decay_ms must be >= 1, novelty_boost >= 0")


# -- product structure derived from the catalogue ------------------------------------------------


def _catalogue_seed(catalogue: Catalogue) -> int:
    """A seed that depends only on the catalogue's ids, so structure follows the catalogue."""
    digest = zlib.crc32("\n".join(catalogue.product_ids).encode())
    return zlib.crc32("\n".join(catalogue.category_ids).encode(), digest)


class _Sampler:
    """Popularity-weighted sampling over the products available at one time."""

    def __init__(self, pm: _ProductModel, weights: np.ndarray) -> None:
        self._pm = pm
        self.cum_pop = np.cumsum(weights[pm.order])
        before = np.concatenate([[0.0], self.cum_pop])
        self.cat_cum_before = before[pm.cat_start]
        self.cat_mass = before[pm.cat_end] - self.cat_cum_before
        self.category_pop = self.cat_mass / self.cat_mass.sum()
        self.category_cdf = np.cumsum(self.category_pop)
        # a neighbour's weight; the rows of the products asked for are summed when asked (a
        # table for the whole catalogue per chunk would cost more than the chunk's sessions)
        self._neighbour_weight = weights**pm.neighbour_popularity_exponent

    def popular_in(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Products drawn by popularity within each given category (``u`` uniform in [0, 1))."""
        pm = self._pm
        target = self.cat_cum_before[categories] + u * self.cat_mass[categories]
        pos = np.searchsorted(self.cum_pop, target, side="right")
        pos = np.clip(pos, pm.cat_start[categories], pm.cat_end[categories] - 1)
        products: np.ndarray = pm.order[pos]  # fancy indexing is typed Any by numpy
        return products

    def neighbour_of(self, products: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One neighbour of each product, weighted by a power of its popularity (a popular
        product of its category when none of its neighbours is available)."""
        candidates = self._pm.neighbours[products]
        cum = np.cumsum(self._neighbour_weight[candidates], axis=1)
        total = cum[:, -1]
        col = np.minimum((cum <= (u * total)[:, None]).sum(axis=1), cum.shape[1] - 1)
        neighbours: np.ndarray = candidates[np.arange(len(products)), col]
        # no available neighbour: a popular product of the category instead
        lonely = total <= 0
        if lonely.any():
            neighbours[lonely] = self.popular_in(self._pm.category[products[lonely]], u[lonely])
        return neighbours


class _ProductModel:
    """Index structures for fast vectorised sampling over the catalogue, and its launches."""

    def __init__(self, catalogue: Catalogue, config: SimulationConfig) -> None:
        rng = np.random.default_rng([_catalogue_seed(catalogue), 0x5EED])
        n = len(catalogue)
        cat_names, category = np.unique(np.asarray(catalogue.category_ids), return_inverse=True)
        self.category: np.ndarray = category.astype(np.int64)
        self.n_categories = len(cat_names)
        self.prices = np.asarray(catalogue.prices, dtype=np.float64)
        pop = np.asarray(catalogue.popularity, dtype=np.float64)
        self.popularity = pop / pop.sum()
        self.neighbour_popularity_exponent = config.neighbour_popularity_exponent

        # products grouped by category, ordered by a latent "similarity" coordinate
        latent = rng.random(n)
        self.order = np.lexsort((latent, self.category))
        sorted_cat = self.category[self.order]
        self.cat_start = np.searchsorted(sorted_cat, np.arange(self.n_categories), side="left")
        self.cat_end = np.searchsorted(sorted_cat, np.arange(self.n_categories), side="right")

        # neighbours: the n_neighbours nearest products on the latent ordering, cyclic per category
        position = np.empty(n, dtype=np.int64)
        position[self.order] = np.arange(n)
        n_neighbours = config.n_neighbours
        half = max(1, n_neighbours // 2)
        offsets = np.concatenate([np.arange(-half, 0), np.arange(1, n_neighbours - half + 1)])
        start = self.cat_start[self.category]
        size = self.cat_end[self.category] - start
        local = position - start
        neigh_pos = start[:, None] + (local[:, None] + offsets[None, :]) % size[:, None]
        self.neighbours = self.order[neigh_pos]

        # conversion propensity of each product (learnable from history), mean ~1
        self.conversion = rng.lognormal(-0.125, 0.5, n)
        median_price = np.array(
            [
                np.median(self.prices[self.order[s:e]])
                for s, e in zip(self.cat_start, self.cat_end, strict=True)
            ]
        )
        self.relative_cheapness = median_price[self.category] / self.prices
        category_mass = np.bincount(self.category, weights=self.popularity)
        #: categories' share of the popularity, the whole catalogue (users' preferences)
        self.category_pop = category_mass / category_mass.sum()

        # launches: a share of the products appears over time (own stream: the structure above
        # does not depend on it); each category's most popular product is there from the start
        launch_rng = np.random.default_rng([_catalogue_seed(catalogue), 0x1A0C])
        self.launch_ms = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        is_new = launch_rng.random(n) < config.new_product_share
        anchors = self.order[
            [
                s + int(np.argmax(self.popularity[self.order[s:e]]))
                for s, e in zip(self.cat_start, self.cat_end, strict=True)
            ]
        ]
        is_new[anchors] = False
        offsets_ms = (launch_rng.random(n) * config.launch_span_ms).astype(np.int64)
        self.launch_ms[is_new] = config.launch_origin_ms + offsets_ms[is_new]
        self.is_new = is_new
        self._novelty_boost = config.novelty_boost
        self._novelty_decay_ms = config.novelty_decay_ms
        self._static = _Sampler(self, self.popularity) if not is_new.any() else None
        self._always = _Sampler(self, np.where(is_new, 0.0, self.popularity))
        self._first_launch = int(self.launch_ms[is_new].min()) if is_new.any() else 0

    def sampler_at(self, time_ms: int) -> _Sampler:
        """Sampling over the products launched by ``time_ms``, new ones boosted by novelty."""
        if self._static is not None:
            return self._static
        if time_ms < self._first_launch:
            return self._always
        age = (time_ms - self.launch_ms[self.is_new]).astype(np.float64)
        boost = np.where(
            age >= 0,
            1.0 + self._novelty_boost * np.exp(-np.maximum(age, 0.0) / self._novelty_decay_ms),
            0.0,
        )
        weights = self.popularity.copy()
        weights[self.is_new] *= boost
        return _Sampler(self, weights)


class _Population:
    """Users: activity level and preferred categories, from ``config.population_seed``."""

    def __init__(self, config: SimulationConfig, products: _ProductModel) -> None:
        rng = np.random.default_rng([config.population_seed, 0x05E5])
        n = config.n_users
        activity = rng.gamma(config.user_activity_shape, 1.0, n)
        self.activity_cdf = np.cumsum(activity) / activity.sum()
        self._k = max(1, config.max_preferred_categories)
        self._n_categories = products.n_categories
        self._category_pop = products.category_pop
        self.preferred = self.draw_preferences(rng, n)
        self.ids: list[str] = [f"u{i:06d}" for i in range(n)]

    def draw_preferences(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Preferred categories of ``n`` users, ``(n, max_preferred_categories)``."""
        k = self._k
        prefs = rng.choice(self._n_categories, size=(n, k), p=self._category_pop)
        n_pref = rng.integers(1, k + 1, n)
        # unused slots repeat the primary category, which weights it more
        preferred: np.ndarray = np.where(
            np.arange(k)[None, :] < n_pref[:, None], prefs, prefs[:, :1]
        )
        return preferred

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.minimum(
            np.searchsorted(self.activity_cdf, rng.random(count), side="right"),
            len(self.ids) - 1,
        )


# -- chunk of sessions ---------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Records of the sessions starting in one chunk, as aligned columns (not yet sorted)."""

    time_ms: np.ndarray
    session: np.ndarray  # local session index in the chunk
    product: np.ndarray
    kind: np.ndarray  # 0..2 = EVENT_TYPES, 3 = purchase line
    quantity: np.ndarray
    user: np.ndarray  # per session: index in the population, -1 for a first-time visitor
    keep: np.ndarray  # per session: does it start inside the requested range


_PURCHASE = 3


class ClickstreamSimulator:
    """Generates browsing events and purchase outcomes (see module doc)."""

    def __init__(self, catalogue: Catalogue, config: SimulationConfig, seed: int) -> None:
        self.catalogue = catalogue
        self.config = config
        self.seed = int(seed)
        self._products = _ProductModel(catalogue, config)
        self._population = _Population(config, self._products)
        self._product_ids: list[str] = list(catalogue.product_ids)
        self._category_ids: list[str] = list(catalogue.category_ids)
        self._prices: list[float] = [float(p) for p in catalogue.prices]
        tag = np.random.SeedSequence([self.seed, 0x1D]).generate_state(2, np.uint32)
        self._id_high = (int(tag[0]) << 32 | int(tag[1])) << 64

    # -- public API

    def launch_times(self) -> dict[str, int]:
        """Launch time (ms) of every product launched over time (``new_product_share``); the
        others are available from the start. No record shows a product before its launch."""
        pm = self._products
        return {self._product_ids[i]: int(pm.launch_ms[i]) for i in np.flatnonzero(pm.is_new)}

    def records(self, start_ms: int, end_ms: int) -> Iterator[tuple[str, dict]]:
        """Yields ``("event", browsing_event)`` and ``("purchase", purchase_outcome)`` dicts.

        Records come in non-decreasing ``event_time`` order, for every session that starts in
        ``[start_ms, end_ms)``; their later events and purchases may fall after ``end_ms``.
        Streaming: only the sessions of one chunk plus the still-open tail of earlier ones are
        held in memory.
        """
        if end_ms <= start_ms:
            return
        chunk_ms = self.config.chunk_ms
        pend_time = np.empty(0, dtype=np.int64)
        pend_seq = np.empty(0, dtype=np.int64)
        pend_recs: list[tuple[str, dict]] = []
        first, last = start_ms // chunk_ms, (end_ms - 1) // chunk_ms
        for chunk_index in range(first, last + 1):
            chunk_start = chunk_index * chunk_ms
            chunk = self._generate_chunk(chunk_index, start_ms, end_ms)
            times, seqs, recs = self._materialise(chunk_index, chunk)
            all_time = np.concatenate([pend_time, times])
            all_seq = np.concatenate([pend_seq, seqs])
            all_recs = pend_recs + recs
            order = np.lexsort((all_seq, all_time))
            # nothing generated later can start before the next chunk's start
            boundary = chunk_start + chunk_ms if chunk_index < last else np.iinfo(np.int64).max
            n_out = int(np.searchsorted(all_time[order], boundary, side="left"))
            for i in order[:n_out].tolist():
                yield all_recs[i]
            rest = order[n_out:]
            pend_time, pend_seq = all_time[rest], all_seq[rest]
            pend_recs = [all_recs[i] for i in rest.tolist()]

    # -- generation

    def _chunk_rng(self, chunk_index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, chunk_index & _U64_MASK, 0xC1C])

    def _session_starts(self, rng: np.random.Generator, chunk_start: int) -> np.ndarray:
        cfg = self.config
        rate_per_ms = cfg.n_users * cfg.sessions_per_user_per_day / _MS_PER_DAY
        peak = 1.0 + abs(cfg.diurnal_amplitude)
        n = rng.poisson(rate_per_ms * cfg.chunk_ms * peak)
        starts = chunk_start + np.sort(rng.integers(0, cfg.chunk_ms, n))
        hour = (starts % _MS_PER_DAY) / 3_600_000.0
        intensity = 1.0 + cfg.diurnal_amplitude * np.cos(2 * np.pi * (hour - 20.0) / 24.0)
        accept = rng.random(n) * peak < intensity
        return starts[accept]

    def _generate_chunk(self, chunk_index: int, start_ms: int, end_ms: int) -> _Chunk:
        cfg, pm = self.config, self._products
        rng = self._chunk_rng(chunk_index)
        # the realism extensions draw from their own stream, so the rest does not depend on them
        extra_rng = np.random.default_rng([self.seed, chunk_index & _U64_MASK, 0xE47])
        chunk_start = chunk_index * cfg.chunk_ms
        sampler = pm.sampler_at(chunk_start)
        starts = self._session_starts(rng, chunk_start)
        n_sess = len(starts)
        users = self._population.draw(rng, n_sess)
        prefs = self._population.preferred[users]
        visitor = extra_rng.random(n_sess) < cfg.new_user_share
        if visitor.any():
            prefs = prefs.copy()
            prefs[visitor] = self._population.draw_preferences(extra_rng, int(visitor.sum()))

        # -- views: lengths, then a vectorised walk over steps
        lengths = 1 + np.floor(
            rng.lognormal(cfg.session_views_log_median, cfg.session_views_log_sigma, n_sess)
        ).astype(np.int64)
        lengths = np.minimum(lengths, cfg.max_session_views)
        max_len = int(lengths.max()) if n_sess else 0
        hist = np.zeros((n_sess, max(max_len, 1)), dtype=np.int64)

        first_cat = self._draw_categories(rng, prefs, sampler)
        hist[:, 0] = sampler.popular_in(first_cat, rng.random(n_sess))
        current = hist[:, 0].copy()
        p_rep, p_switch = cfg.repeat_view_prob, cfg.category_switch_prob
        for t in range(1, max_len):
            act = np.flatnonzero(lengths > t)
            m = len(act)
            r = rng.random(m)
            u = rng.random(m)
            cur = current[act]
            nxt = np.where(
                rng.random(m) < cfg.neighbour_prob,
                sampler.neighbour_of(cur, u),
                sampler.popular_in(pm.category[cur], u),
            )
            is_switch = (r >= p_rep) & (r < p_rep + p_switch)
            if is_switch.any():
                idx = np.flatnonzero(is_switch)
                cats = self._draw_categories(rng, prefs[act[idx]], sampler)
                nxt[idx] = sampler.popular_in(cats, rng.random(len(idx)))
            is_rep = r < p_rep
            if is_rep.any():
                idx = np.flatnonzero(is_rep)
                back = (rng.random(len(idx)) * t).astype(np.int64)
                nxt[idx] = hist[act[idx], back]
            hist[act, t] = nxt
            current[act] = nxt

        # flatten views (session-major, step order)
        step_mask = np.arange(hist.shape[1])[None, :] < lengths[:, None]
        v_sess, v_step = np.nonzero(step_mask)
        v_prod = hist[v_sess, v_step]
        # a view is a repeat if the item was viewed earlier in the session, by whatever route
        pair_key = v_sess * len(pm.prices) + v_prod
        _, first_idx = np.unique(pair_key, return_index=True)
        v_repeat = np.ones(len(v_prod), dtype=bool)
        v_repeat[first_idx] = False

        # view times
        n_views = len(v_prod)
        gaps_ms = self._lognormal_ms(
            rng,
            cfg.view_gap_median_s,
            cfg.view_gap_log_sigma,
            n_views,
            cfg.min_gap_s,
            cfg.max_gap_s,
        )
        gaps_ms[v_step == 0] = 0
        v_time = starts[v_sess] + _segmented_cumsum(gaps_ms, v_step == 0)
        is_last = np.ones(n_views, dtype=bool)
        is_last[:-1] = v_sess[1:] != v_sess[:-1]
        next_gap = np.where(is_last, np.iinfo(np.int64).max, np.roll(gaps_ms, -1))

        # -- carts
        preferred = (prefs[v_sess] == pm.category[v_prod][:, None]).any(axis=1)
        p_cart = (
            cfg.cart_prob
            * np.where(v_repeat, cfg.cart_repeat_boost, 1.0)
            * np.where(preferred, cfg.cart_preferred_boost, 1.0)
            * pm.relative_cheapness[v_prod] ** cfg.cart_price_elasticity
            * pm.conversion[v_prod]
        )
        carted = rng.random(n_views) < np.minimum(p_cart, 0.9)
        c_idx = np.flatnonzero(carted)
        # at most one cart per (session, product): keep the first
        _, first = np.unique(pair_key[c_idx], return_index=True)
        c_idx = c_idx[np.sort(first)]
        cart_delay = self._lognormal_ms(rng, cfg.cart_delay_median_s, 0.8, len(c_idx), 0.0, 600.0)
        cart_delay = np.maximum(1, np.minimum(cart_delay, (next_gap[c_idx] * 4) // 5))
        c_time = v_time[c_idx] + cart_delay
        c_sess, c_prod = v_sess[c_idx], v_prod[c_idx]

        # -- removals: some time between the cart and a minute after the session's last view
        last_view_time = np.zeros(n_sess, dtype=np.int64)
        last_view_time[v_sess[is_last]] = v_time[is_last]
        removed = rng.random(len(c_idx)) < cfg.remove_prob
        r_sess, r_prod = c_sess[removed], c_prod[removed]
        span = last_view_time[r_sess] + 60 * _MS_PER_S - c_time[removed]
        r_time = (
            c_time[removed] + 1 + (rng.random(len(r_sess)) * np.maximum(span, 1)).astype(np.int64)
        )

        # -- purchases: one order per buying session, placed after its last event
        session_end = last_view_time.copy()
        np.maximum.at(session_end, c_sess, c_time)
        np.maximum.at(session_end, r_sess, r_time)

        kept_cart = ~removed
        k_sess, k_prod = c_sess[kept_cart], c_prod[kept_cart]
        p_buy = np.minimum(cfg.buy_carted_prob * pm.conversion[k_prod], 0.95)
        bought = rng.random(len(k_sess)) < p_buy
        b_sess, b_prod = [k_sess[bought]], [k_prod[bought]]

        size_factor = np.sqrt(lengths)
        # a viewed item bought without a cart event, chosen among the session's views
        direct = np.flatnonzero(rng.random(n_sess) < cfg.buy_viewed_prob * size_factor)
        if len(direct):
            pick = (rng.random(len(direct)) * lengths[direct]).astype(np.int64)
            b_sess.append(direct)
            b_prod.append(hist[direct, pick])
        # an item not seen in the session: a neighbour of a viewed one, or popular in its category
        if cfg.unseen_purchase_share is None:
            unseen = np.flatnonzero(rng.random(n_sess) < cfg.buy_unseen_prob * size_factor)
            if len(unseen):
                pick = (rng.random(len(unseen)) * lengths[unseen]).astype(np.int64)
                seen_item = hist[unseen, pick]
                u = rng.random(len(unseen))
                item = np.where(
                    rng.random(len(unseen)) < cfg.unseen_neighbour_prob,
                    sampler.neighbour_of(seen_item, u),
                    sampler.popular_in(pm.category[seen_item], u),
                )
                b_sess.append(unseen)
                b_prod.append(item)
        elif n_sess:
            n_seen = sum(len(b) for b in b_sess)
            share = cfg.unseen_purchase_share
            unseen, item = self._unseen_purchases(
                extra_rng,
                sampler,
                hist,
                lengths,
                np.unique(pair_key),
                np.unique(np.concatenate(b_sess)),
                extra_rng.poisson(n_seen * share / (1.0 - share)),
            )
            b_sess.append(unseen)
            b_prod.append(item)
        b_sess_a = np.concatenate(b_sess)
        b_prod_a = np.concatenate(b_prod)
        # one line per product and order
        _, first = np.unique(b_sess_a * len(pm.prices) + b_prod_a, return_index=True)
        first = np.sort(first)
        b_sess_a, b_prod_a = b_sess_a[first], b_prod_a[first]
        buying = np.unique(b_sess_a)
        delay = np.zeros(n_sess, dtype=np.int64)
        delay[buying] = self._lognormal_ms(
            rng,
            cfg.purchase_delay_median_s,
            cfg.purchase_delay_log_sigma,
            len(buying),
            cfg.min_purchase_delay_s,
            24 * 3600.0,
        )
        b_time = session_end[b_sess_a] + delay[b_sess_a]
        quantity = 1 + np.where(
            rng.random(len(b_sess_a)) < cfg.multi_quantity_prob,
            rng.geometric(0.6, len(b_sess_a)),
            0,
        )

        keep = (starts >= start_ms) & (starts < end_ms)
        n_browsing = n_views + len(c_sess) + len(r_sess)
        return _Chunk(
            time_ms=np.concatenate([v_time, c_time, r_time, b_time]),
            session=np.concatenate([v_sess, c_sess, r_sess, b_sess_a]),
            product=np.concatenate([v_prod, c_prod, r_prod, b_prod_a]),
            kind=np.concatenate(
                [
                    np.full(n_views, _VIEW),
                    np.full(len(c_sess), _CART),
                    np.full(len(r_sess), _REMOVE),
                    np.full(len(b_sess_a), _PURCHASE),
                ]
            ).astype(np.int64),
            quantity=np.concatenate([np.ones(n_browsing, dtype=np.int64), quantity]),
            user=np.where(visitor, -1, users),
            keep=keep,
        )

    def _unseen_purchases(
        self,
        rng: np.random.Generator,
        sampler: _Sampler,
        hist: np.ndarray,
        lengths: np.ndarray,
        viewed_keys: np.ndarray,
        buying: np.ndarray,
        count: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` purchase lines of products not viewed in their session: a session that
        buys already (``buying``, prob ``unseen_joins_order_prob``) or one drawn by the square
        root of its length; the product a neighbour of one of the session's viewed products or
        a popular one of that product's category (``unseen_neighbour_prob``). A draw that hits a
        viewed product is drawn again (up to 4 times, then dropped)."""
        pm, cfg, n_products = self._products, self.config, len(self._products.prices)
        weights = np.cumsum(np.sqrt(lengths))
        sess = np.minimum(
            np.searchsorted(weights, rng.random(count) * weights[-1], side="right"),
            len(lengths) - 1,
        )
        joins = rng.random(count) < cfg.unseen_joins_order_prob
        if len(buying) and joins.any():
            sess[joins] = buying[rng.integers(0, len(buying), int(joins.sum()))]
        item = np.full(count, -1, dtype=np.int64)
        todo = np.arange(count)
        for _ in range(4):
            if len(todo) == 0:
                break
            s = sess[todo]
            seen_item = hist[s, (rng.random(len(todo)) * lengths[s]).astype(np.int64)]
            u = rng.random(len(todo))
            drawn = np.where(
                rng.random(len(todo)) < cfg.unseen_neighbour_prob,
                sampler.neighbour_of(seen_item, u),
                sampler.popular_in(pm.category[seen_item], u),
            )
            fresh = ~np.isin(s * n_products + drawn, viewed_keys)
            item[todo[fresh]] = drawn[fresh]
            todo = todo[~fresh]
        ok = item >= 0
        return sess[ok], item[ok]

    def _draw_categories(
        self, rng: np.random.Generator, prefs: np.ndarray, sampler: _Sampler
    ) -> np.ndarray:
        """A preferred category of each user (prob ``preferred_category_prob``) or a popular one."""
        pm, n = self._products, len(prefs)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        from_pref = prefs[np.arange(n), rng.integers(0, prefs.shape[1], n)]
        global_cat = np.minimum(
            np.searchsorted(sampler.category_cdf, rng.random(n), side="right"),
            pm.n_categories - 1,
        )
        return np.where(rng.random(n) < self.config.preferred_category_prob, from_pref, global_cat)

    @staticmethod
    def _lognormal_ms(
        rng: np.random.Generator,
        median_s: float,
        sigma: float,
        size: int,
        min_s: float,
        max_s: float,
    ) -> np.ndarray:
        seconds = np.clip(rng.lognormal(np.log(median_s), sigma, size), min_s, max_s)
        return np.round(seconds * _MS_PER_S).astype(np.int64)

    def _materialise(
        self, chunk_index: int, chunk: _Chunk
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, dict]]]:
        """Record dicts of the kept sessions, with their times and a deterministic tie-breaker."""
        sel = np.flatnonzero(chunk.keep[chunk.session])
        times = chunk.time_ms[sel]
        # tie-breaker: chunk, then generation index (views of a session come in step order)
        seqs = (chunk_index << 32) + sel
        ids = (
            (np.uint64(chunk_index & 0xFFFFFFFF) << np.uint64(32)) | sel.astype(np.uint64)
        ) * _ID_MIX
        prefix = f"s{self.seed}-{chunk_index}-"
        order_prefix = f"o{self.seed}-{chunk_index}-"
        users = self._population.ids
        pids, cids, prices = self._product_ids, self._category_ids, self._prices
        id_high = self._id_high
        recs: list[tuple[str, dict]] = []
        append = recs.append
        visitor_prefix = f"n{self.seed}-{chunk_index}-"
        session_user = [
            users[u] if u >= 0 else f"{visitor_prefix}{s}"
            for s, u in enumerate(chunk.user.tolist())
        ]
        for t, s, p, k, q, low in zip(
            times.tolist(),
            chunk.session[sel].tolist(),
            chunk.product[sel].tolist(),
            chunk.kind[sel].tolist(),
            chunk.quantity[sel].tolist(),
            ids.tolist(),
            strict=True,
        ):
            if k == _PURCHASE:
                append(
                    (
                        "purchase",
                        {
                            "order_id": f"{order_prefix}{s}",
                            "user_id": session_user[s],
                            "session_id": f"{prefix}{s}",
                            "product_id": pids[p],
                            "quantity": q,
                            "price": prices[p],
                            "event_time": t,
                        },
                    )
                )
            else:
                append(
                    (
                        "event",
                        {
                            "event_id": str(uuid.UUID(int=id_high | low)),
                            "user_id": session_user[s],
                            "session_id": f"{prefix}{s}",
                            "event_type": EVENT_TYPES[k],
                            "product_id": pids[p],
                            "category_id": cids[p],
                            "price": prices[p],
                            "event_time": t,
                        },
                    )
                )
        return times, seqs, recs


def _segmented_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each True of ``starts`` (``values`` int64, session-major)."""
    total = np.cumsum(values)
    if len(values) == 0:
        return total
    seg_id = np.cumsum(starts) - 1
    seg_first = np.flatnonzero(starts)
    offset = total[seg_first] - values[seg_first]
    restarted: np.ndarray = total - offset[seg_id]  # fancy indexing is typed Any by numpy
    return restarted
