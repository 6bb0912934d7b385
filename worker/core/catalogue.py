"""The catalogue tables: everything about products that candidates and features need, as
aligned numpy arrays, and how they are saved inside a model artifact (``tables.npz``).

:class:`CatalogueTables` is the model's catalogue, fixed at training time. Serving extends it
with the products the model does not know (:class:`worker.core.live_catalogue.LiveCatalogue`);
candidates and features read either through :class:`ProductTables`, the fields they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class ProductTables(Protocol):
    """What candidate generation and features read: :class:`CatalogueTables`' arrays, indexed
    by product index (``0 .. n_products - 1``) or by category index."""

    @property
    def product_ids(self) -> np.ndarray: ...
    @property
    def category(self) -> np.ndarray: ...
    @property
    def log_price(self) -> np.ndarray: ...
    @property
    def log_pop(self) -> np.ndarray: ...
    @property
    def cart_rate(self) -> np.ndarray: ...
    @property
    def global_rank(self) -> np.ndarray: ...
    @property
    def category_rank(self) -> np.ndarray: ...
    @property
    def covis_items(self) -> np.ndarray: ...
    @property
    def covis_scores(self) -> np.ndarray: ...
    @property
    def category_top(self) -> np.ndarray: ...
    @property
    def global_top(self) -> np.ndarray: ...
    @property
    def n_products(self) -> int: ...


@dataclass(frozen=True)
class CatalogueTables:
    """Everything about products that candidates and features need, as aligned arrays.

    Product ``i`` (an index) has id ``product_ids[i]`` and category ``category[i]``.
    """

    product_ids: np.ndarray  # str, (P,)
    category_ids: np.ndarray  # str, (n_categories,)
    category: np.ndarray  # int32 (P,) index into category_ids
    log_price: np.ndarray  # float32 (P,) log1p(price); 0 if unknown
    log_pop: np.ndarray  # float32 (P,) log1p(views in the training window)
    cart_rate: np.ndarray  # float32 (P,) smoothed carts per view
    global_rank: np.ndarray  # float32 (P,) log1p(rank by views), 0 = most popular
    category_rank: np.ndarray  # float32 (P,) log1p(rank within its category)
    covis_items: np.ndarray  # int32 (P, M) co-visited neighbours, best first, -1 padded
    covis_scores: np.ndarray  # float32 (P, M) their normalised scores, 0 padded
    category_top: np.ndarray  # int32 (n_categories, Mc) most viewed products, -1 padded
    global_top: np.ndarray  # int32 (G,) most viewed products overall

    def __post_init__(self) -> None:
        index = {pid: i for i, pid in enumerate(self.product_ids.tolist())}
        object.__setattr__(self, "_index", index)

    @property
    def n_products(self) -> int:
        return int(self.product_ids.shape[0])

    @property
    def index(self) -> dict[str, int]:
        """Product id -> index (built once; do not modify)."""
        return self._index  # type: ignore[attr-defined, no-any-return]

    def index_of(self, product_id: str) -> int:
        """Index of a product id of this catalogue (serving resolves any id, known or not,
        through :class:`~worker.core.live_catalogue.LiveCatalogue`).

        Raises:
            KeyError: the product is not in the catalogue of this model.
        """
        return self.index[product_id]

    def popular_product_ids(self, k: int) -> list[str]:
        """The ``k`` most viewed products of the training window (the popularity baseline)."""
        return [str(p) for p in self.product_ids[self.global_top[:k]]]

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path, **{name: getattr(self, name) for name in self.__dataclass_fields__}
        )

    @classmethod
    def load(cls, path: Path) -> CatalogueTables:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
