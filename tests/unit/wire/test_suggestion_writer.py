"""The fast suggestion writer produces exactly the bytes fastavro writes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.pipeline import BatchEntry
from worker.core.records import BrowsingEvent, RankedProduct, SourceRef
from worker.testing import Suggestion
from worker.wire.codec import codec_for
from worker.wire.suggestion_writer import SuggestionWriter, zigzag_varint, zigzag_varints

CATALOGUE = [f"p{i:05d}" for i in range(40)] + ["ünïcødé-product", "x" * 300]
text = st.text(min_size=1, max_size=40)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_zigzag_varint_matches_the_avro_spec_examples_and_round_trips(n):
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert zigzag_varint(n) == buf.getvalue()


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=20))
def test_array_varints_equal_the_scalar_ones(values):
    got = zigzag_varints(np.array(values, dtype=np.int64))
    assert got == [zigzag_varint(n) for n in values]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            text,
            text,
            text,
            st.integers(0, 1000),
            st.integers(0, 2**62),
            st.integers(946_684_800_000, 4_102_444_800_000),
            st.lists(st.integers(0, len(CATALOGUE) - 1), min_size=10, max_size=10, unique=True),
            st.lists(st.floats(allow_nan=False, width=64), min_size=10, max_size=10),
        ),
        min_size=1,
        max_size=8,
    ),
    produced=st.integers(946_684_800_000, 4_102_444_800_000),
    version=text,
    topic=text,
)
def test_batch_encoding_is_byte_identical_to_fastavro(rows, produced, version, topic):
    codec = codec_for("ProductSuggestion")
    writer = SuggestionWriter(codec.header(), CATALOGUE, topic, version)
    events = [
        BrowsingEvent(eid, uid, sid, 0, "p00001", None, None, t)
        for uid, sid, eid, _, _, t, _, _ in rows
    ]
    partitions = [r[3] for r in rows]
    offsets = [r[4] for r in rows]
    items = np.array([r[6] for r in rows], dtype=np.int32)
    scores = np.array([r[7] for r in rows], dtype=np.float64)
    fast = writer.encode_batch(events, partitions, offsets, items, scores, produced)
    # The worker's entries carry the record key (the UTF-8 user id), used as is.
    keyed = [
        BatchEntry(e, -1, p, o, e.user_id.encode("utf-8"))
        for e, p, o in zip(events, partitions, offsets, strict=True)
    ]
    assert writer.encode(keyed, items, scores, produced) == fast
    for i, (event, payload) in enumerate(zip(events, fast, strict=True)):
        products = tuple(
            RankedProduct(CATALOGUE[item], rank, float(score))
            for rank, (item, score) in enumerate(zip(items[i], scores[i], strict=True), 1)
        )
        reference = codec.encode(
            Suggestion(
                event, SourceRef(topic, partitions[i], offsets[i]), version, products
            ).to_avro(produced)
        )
        assert payload == reference
        assert codec.decode(payload)["products"][0]["product_id"] == CATALOGUE[items[i][0]]
