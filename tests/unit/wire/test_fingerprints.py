"""``worker schemas --fingerprints`` (worker/wire/fingerprints.py): the CRC-64-AVRO fingerprints
of the Parsing Canonical Forms of the package's schemas, checked against an implementation of the
Avro specification written here, independently of fastavro and of the codec.

Pure: no broker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import fastavro.schema
import pytest

from tests.unit.wire.test_codec import EVENT, canonical_form
from worker import cli
from worker.core.errors import UnknownSchemaError
from worker.wire.codec import SCHEMA_FILES, codec_for, load_schema
from worker.wire.fingerprints import render, schema_fingerprints

EMPTY = 0xC15D213AA4D7A795  # the specification's fingerprint of the empty byte string
POLY_MASK = (1 << 64) - 1


def rabin_crc64(data: bytes) -> int:
    """CRC-64-AVRO per the specification ("Schema Fingerprints"), bit by bit (no table): shift
    the 64-bit state right once per input bit, folding in EMPTY whenever a 1 falls out."""
    fp = EMPTY
    for byte in data:
        fp ^= byte
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY if fp & 1 else 0)
    return fp & POLY_MASK


def signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


#: Golden values: the wire contract. A change here means every producer must change too.
EXPECTED = {
    "BrowsingEvent": ("com.shop.recommender.BrowsingEvent", "b5c077aa6d1166bd"),
    "ProductSuggestion": ("com.shop.recommender.ProductSuggestion", "2df0f287da351f0f"),
    "PurchaseOutcome": ("com.shop.recommender.PurchaseOutcome", "fcd7d9f527998d08"),
    # Per-version figures added (fields with defaults): was e17b131c5c10ec3e, still read; the
    # comparison's `windows` added (head to head): was eeb28a3d6be8183d, still read.
    "AccuracyReport": ("com.shop.recommender.AccuracyReport", "fd52bc45156c8695"),
}

README = Path(__file__).resolve().parents[3] / "README.md"


def test_rabin_crc64_helper_matches_the_specification() -> None:
    """The helper gives the specification's empty fingerprint and the Avro project's published
    fingerprint of the schema "null" (share/test/data/schema-tests.txt)."""
    assert rabin_crc64(b"") == EMPTY
    assert signed64(rabin_crc64(b'"null"')) == 7195948357588979594


def test_every_schema_of_the_package_is_listed_once() -> None:
    assert [fp.schema for fp in schema_fingerprints()] == list(SCHEMA_FILES)
    assert set(EXPECTED) == set(SCHEMA_FILES)


@pytest.mark.parametrize("fp", schema_fingerprints(), ids=lambda fp: fp.schema)
def test_fingerprint_is_the_specification_crc64_of_the_canonical_form(fp) -> None:
    """Canonical form and fingerprint of each schema, recomputed from the specification."""
    schema = load_schema(fp.schema)
    canonical = canonical_form(schema)
    assert fp.canonical == canonical
    assert "logicalType" not in canonical and "doc" not in canonical
    value = rabin_crc64(canonical.encode("utf-8"))
    assert fp.fingerprint == value.to_bytes(8, "little")
    assert fp.as_int64 == signed64(value)
    assert (fp.full_name, fp.wire_hex) == EXPECTED[fp.schema]
    assert fp.header_hex == "c301" + fp.wire_hex
    # What is printed is what the codec writes and accepts.
    assert codec_for(fp.schema).header() == bytes.fromhex(fp.header_hex)


def test_fastavro_canonical_form_drops_logical_types_as_the_specification_says() -> None:
    """[STRIP] keeps only type/name/fields/symbols/items/values/size; [PRIMITIVES] then writes
    an annotated primitive as its bare name. A fastavro that kept the annotation would change
    every fingerprint of a schema with a timestamp-millis field."""
    annotated = {"type": "long", "logicalType": "timestamp-millis"}
    assert fastavro.schema.to_parsing_canonical_form(annotated) == '"long"'
    assert canonical_form(annotated) == '"long"'


def test_a_canonical_form_that_keeps_the_annotated_primitive_has_another_fingerprint() -> None:
    """Apache Avro's Python library (avro 1.12.2, checked by hand outside this venv) writes
    ``{"type":"long"}`` for a timestamp-millis field: its fingerprint of BrowsingEvent is
    c9655a09d78fe31e, which the reader does not know, and the error says what to do."""
    spec = canonical_form(load_schema("BrowsingEvent"))
    avro_python = spec.replace('"type":"long"}]}', '"type":{"type":"long"}}]}')
    assert avro_python != spec
    other = rabin_crc64(avro_python.encode("utf-8")).to_bytes(8, "little")
    assert other.hex() == "c9655a09d78fe31e"

    payload = b"\xc3\x01" + other + codec_for("BrowsingEvent").encode(EVENT)[10:]
    with pytest.raises(UnknownSchemaError) as raised:
        codec_for("BrowsingEvent").decode(payload)
    message = str(raised.value)
    assert "c9655a09d78fe31e" in message
    assert "b5c077aa6d1166bd" in message
    assert "Parsing Canonical Form per the Avro specification" in message
    assert "worker schemas --fingerprints" in message


def test_render_lists_name_hex_int_and_optionally_the_canonical_form() -> None:
    fingerprints = schema_fingerprints()
    text = render(fingerprints)
    for fp in fingerprints:
        assert f"{fp.full_name} (schemas/{fp.file})" in text
        assert f"little-endian hex): {fp.wire_hex}\n" in text
        assert f"signed 64-bit integer: {fp.as_int64}\n" in text
        assert fp.canonical not in text
    assert "canonical form: " + fingerprints[0].canonical in render(fingerprints, canonical=True)


def test_render_lists_the_fingerprints_of_the_released_versions() -> None:
    """Every writer schema ever released (schemas/history/), oldest first: a docs-only version
    repeats its predecessor's fingerprint; the newest is today's."""
    by_name = {fp.schema: fp for fp in schema_fingerprints()}
    report = by_name["AccuracyReport"]
    assert [f.hex() for f in report.released] == [
        "bbd383ee34c3159f",  # before the live figures
        "e17b131c5c10ec3e",  # before the per-version figures
        "eeb28a3d6be8183d",  # before the comparison's windows (head to head)
        "fd52bc45156c8695",
    ]
    assert all(fp.released[-1] == fp.fingerprint for fp in by_name.values())
    text = render(list(by_name.values()))
    assert (
        "released versions, all read (wire hex): v1 bbd383ee34c3159f, v2 e17b131c5c10ec3e, "
        "v3 eeb28a3d6be8183d, v4 fd52bc45156c8695\n"
    ) in text
    assert "v1 b5c077aa6d1166bd, v2 b5c077aa6d1166bd\n" in text  # BrowsingEvent: a doc change


def test_worker_schemas_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``worker schemas --fingerprints [--canonical]`` prints without Kafka; exit code 0."""
    assert cli.main(["schemas", "--fingerprints", "--log-format", "json"]) == 0
    out = capsys.readouterr().out
    assert out == render(schema_fingerprints())
    assert "-4799129190207602507" in out  # BrowsingEvent, b5c077aa6d1166bd as a signed long

    assert cli.main(["schemas", "--fingerprints", "--canonical", "--log-format", "json"]) == 0
    out = capsys.readouterr().out
    assert out == render(schema_fingerprints(), canonical=True)
    json.loads(out.split("canonical form: ", 1)[1].splitlines()[0])  # the form is JSON

    assert cli.main(["schemas", "--log-format", "json"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{name}\tschemas/{SCHEMA_FILES[s]}" for s, (name, _) in EXPECTED.items()
    ]


def test_readme_states_the_fingerprints_the_code_computes() -> None:
    """The README's table of fingerprints is the one the code computes."""
    text = README.read_text(encoding="utf-8")
    for fp in schema_fingerprints():
        row = re.search(rf"^\| `{re.escape(fp.full_name)}` \|.*$", text, re.MULTILINE)
        assert row, f"README has no fingerprint row for {fp.full_name}"
        assert f"`{fp.wire_hex}`" in row.group(0)
        assert f"`{fp.as_int64}`" in row.group(0)
