"""A fast writer of ``ProductSuggestion`` records for a whole micro-batch.

Byte-for-byte the Avro binary encoding that fastavro writes for the same record (the tests hold
it to that on random records), but specialised to this one schema: product ids are encoded once
per catalogue, the ranks 1..K once, and the K scores of an event with one ``struct.pack``. It
avoids building a dict and K record objects per event, which cost more than the model call.

Field order (schemas/product_suggestion.avsc): suggestion_id, user_id, session_id, event_id,
source_topic, source_partition, source_offset, model_version, products[product_id, rank,
score], event_time, produced_time.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from worker.core.pipeline import BatchEntry
from worker.core.records import BrowsingEvent


def zigzag_varint(n: int) -> bytes:
    """Avro ``int``/``long`` encoding: zigzag, then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def avro_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return zigzag_varint(len(data)) + data


class SuggestionWriter:
    """Encodes suggestions of one model (catalogue) and one input topic.

    Args:
        header: the framing prefix (``AvroCodec.header()``).
        product_ids: the catalogue, index -> product id (products added later:
            :meth:`name_product`).
        source_topic: the input topic the events come from.
        model_version: the serving model's version.
    """

    def __init__(
        self, header: bytes, product_ids: Sequence[str], source_topic: str, model_version: str
    ) -> None:
        self._header = header
        self._products = [avro_string(p) for p in product_ids]
        self._topic = avro_string(source_topic)
        self._topic_prefix = f"{source_topic}/"
        self._version = avro_string(model_version)
        self._ranks: list[bytes] = []
        self._packers: dict[int, struct.Struct] = {}

    def name_product(self, index: int, product_id: str) -> None:
        """Name (or rename) catalogue index ``index``: for products that join the serving
        catalogue after the writer was made (:class:`~worker.core.live_catalogue.LiveCatalogue`
        hands out their indices)."""
        products = self._products
        if index >= len(products):
            products.extend([avro_string("")] * (index + 1 - len(products)))
        products[index] = avro_string(product_id)

    def _rank(self, rank: int) -> bytes:
        while len(self._ranks) < rank:
            self._ranks.append(zigzag_varint(len(self._ranks) + 1))
        return self._ranks[rank - 1]

    def encode_batch(
        self,
        events: Sequence[BrowsingEvent],
        partitions: Sequence[int],
        offsets: Sequence[int],
        items: np.ndarray,
        scores: np.ndarray,
        produced_time_ms: int,
    ) -> list[bytes]:
        """:meth:`encode` for events given with their partitions and offsets side by side."""
        entries = [
            BatchEntry(event, -1, partition, offset)
            for event, partition, offset in zip(events, partitions, offsets, strict=True)
        ]
        return self.encode(entries, items, scores, produced_time_ms)

    def encode(
        self,
        entries: Sequence[BatchEntry],
        items: np.ndarray,
        scores: np.ndarray,
        produced_time_ms: int,
    ) -> list[bytes]:
        """One framed record per entry (its event, partition and offset); ``items``/``scores``
        are ``(B, K)``, best first, row ``i`` answering ``entries[i]``."""
        k = items.shape[1] if items.ndim == 2 else 0
        packer = self._packers.setdefault(k, struct.Struct("<" + "d" * k))
        ranks = [self._rank(r) for r in range(1, k + 1)]
        count = zigzag_varint(k) if k else b""
        produced = zigzag_varint(produced_time_ms)
        products = self._products
        out = []
        for (event, _, partition, offset, _), row, row_scores in zip(
            entries, items.tolist(), scores.tolist(), strict=True
        ):
            packed = packer.pack(*row_scores)
            parts = [
                self._header,
                avro_string(f"{self._topic_prefix}{partition}/{offset}"),
                avro_string(event.user_id),
                avro_string(event.session_id),
                avro_string(event.event_id),
                self._topic,
                zigzag_varint(partition),
                zigzag_varint(offset),
                self._version,
                count,
            ]
            for i, item in enumerate(row):
                parts.append(products[item])
                parts.append(ranks[i])
                parts.append(packed[8 * i : 8 * i + 8])
            parts.append(b"\x00")  # end of the products array
            parts.append(zigzag_varint(event.event_time_ms))
            parts.append(produced)
            out.append(b"".join(parts))
        return out
