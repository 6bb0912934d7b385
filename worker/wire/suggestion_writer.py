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


def zigzag_varints(values: np.ndarray) -> list[bytes]:
    """:func:`zigzag_varint` of each of an int64 array, computed for the whole array at once."""
    v = values.astype(np.int64, copy=False)
    z = ((v << 1) ^ (v >> 63)).astype(np.uint64)
    groups = np.empty((v.shape[0], 10), dtype=np.uint8)
    for i in range(10):
        groups[:, i] = (z >> np.uint64(7 * i)) & np.uint64(0x7F)
    length = np.ones(v.shape[0], dtype=np.intp)
    for i in range(1, 10):
        length += z >= np.uint64(1 << (7 * i))  # 7*i bits no longer hold z: one more byte
    groups[np.arange(10)[None, :] < (length - 1)[:, None]] |= 0x80  # continuation bits
    raw = groups.tobytes()
    return [raw[10 * row : 10 * row + size] for row, size in enumerate(length.tolist())]


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
        are ``(B, K)``, best first, row ``i`` answering ``entries[i]``.

        The scores of the whole batch are laid out as little-endian doubles once (``tobytes``),
        each product's (id, rank) bytes are looked up per rank position, and short strings
        and counts take their one-byte varint from a table."""
        k = items.shape[1] if items.ndim == 2 else 0
        ranks = [self._rank(r) for r in range(1, k + 1)]
        count = zigzag_varint(k) if k else b""
        produced = zigzag_varint(produced_time_ms)
        products = self._products
        score_bytes = np.ascontiguousarray(scores, dtype="<f8").tobytes()
        width = 8 * k
        header, topic, version = self._header, self._topic, self._version
        prefix = self._topic_prefix
        n = len(entries)
        offsets = zigzag_varints(np.fromiter((e.offset for e in entries), np.int64, n))
        times = zigzag_varints(np.fromiter((e.event.event_time_ms for e in entries), np.int64, n))
        out: list[bytes] = []
        append = out.append
        base = 0
        for (event, _, partition, offset, key), row, offset_bytes, time_bytes in zip(
            entries, items.tolist(), offsets, times, strict=True
        ):
            user = key if key is not None else event.user_id.encode("utf-8")
            parts = [
                header,
                _string(f"{prefix}{partition}/{offset}".encode()),
                _length(len(user)),
                user,
                _string(event.session_id.encode("utf-8")),
                _string(event.event_id.encode("utf-8")),
                topic,
                _SHORT_LENGTHS[partition] if 0 <= partition < 64 else zigzag_varint(partition),
                offset_bytes,
                version,
                count,
            ]
            at = base
            for item, rank in zip(row, ranks, strict=True):
                parts.append(products[item])
                parts.append(rank)
                parts.append(score_bytes[at : at + 8])
                at += 8
            base += width
            parts.append(b"\x00")  # end of the products array
            parts.append(time_bytes)
            parts.append(produced)
            append(b"".join(parts))
        return out


#: The varint of every length below 64 (one byte: the zigzag of n is 2n).
_SHORT_LENGTHS = tuple(bytes([n << 1]) for n in range(64))


def _length(n: int) -> bytes:
    return _SHORT_LENGTHS[n] if n < 64 else zigzag_varint(n)


def _string(data: bytes) -> bytes:
    """Avro ``string`` (or ``bytes``) of already UTF-8 ``data``."""
    n = len(data)
    return (_SHORT_LENGTHS[n] if n < 64 else zigzag_varint(n)) + data
