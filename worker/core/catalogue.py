"""The catalogue tables: everything about products that candidates and features need, as
aligned numpy arrays, and how they are saved inside a model artifact (``tables.npz``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.core.errors import UnknownProductError


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

    def index_of(self, product_id: str) -> int:
        """Index of a product id.

        Raises:
            UnknownProductError: the product is not in the catalogue of this model.
        """
        try:
            return self._index[product_id]  # type: ignore[attr-defined, no-any-return]
        except KeyError:
            raise UnknownProductError(
                f"product {product_id!r} is not in the model's catalogue"
            ) from None

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
