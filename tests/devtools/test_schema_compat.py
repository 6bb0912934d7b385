"""The schema compatibility gate (``worker-dev schemas check``, README section "Schemas").

Two halves:

* the repository's schemas pass it: each current schema is backward and forward compatible with
  every released version in ``schemas/history/``, equals its newest one, and every released
  version's fingerprint is known to the codec (single-object payloads name their writer schema by
  fingerprint only);
* the gate refuses real incompatible changes, made to copies of the real schemas in a temporary
  folder and released as a developer would (current file changed, new ``v<N+1>.avsc`` added),
  and accepts a compatible one; the command prints the refused pair and why.

A property test checks that the checker's verdict (Apache Avro's ``avro.compatibility``) agrees
with what fastavro, the codec's library, actually does when it resolves a writer against a
reader.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.read import SchemaResolutionError
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools import cli
from devtools.schema_compat import (
    SCHEMAS_DIR,
    changed_logical_types,
    check_repository,
    current_schemas,
    invalid_defaults,
    released_versions,
    removed_enum_symbols,
    resolution_problems,
    run,
)
from worker.wire.codec import SCHEMA_FILES, ParsedSchema, codec_for

STEMS = [file.removesuffix(".avsc") for file in SCHEMA_FILES.values()]
NAME_OF = {file.removesuffix(".avsc"): name for name, file in SCHEMA_FILES.items()}
PAIRS = [(stem, v.version) for stem in STEMS for v in released_versions(stem)]
#: Released versions in the repository's history (a released test copy adds one).
RELEASED = len(PAIRS)


# -- the repository's schemas ------------------------------------------------------------------


def test_the_gate_passes_on_the_repository() -> None:
    """No finding at all, for the four schemas of the product (and no other file in schemas/)."""
    assert [c.schema for c in current_schemas()] == sorted(STEMS)
    assert check_repository() == []


@pytest.mark.parametrize(("stem", "version"), PAIRS)
def test_current_schema_reads_and_is_read_by_every_released_version(
    stem: str, version: int
) -> None:
    """Backward (today's reader, the old writer) and forward (the old reader, today's writer),
    by Avro schema resolution; no enum symbol removed and no logical type changed since."""
    current = json.loads((SCHEMAS_DIR / f"{stem}.avsc").read_text("utf-8"))
    old = released_versions(stem)[version - 1].json
    assert resolution_problems(current, old) == []
    assert resolution_problems(old, current) == []
    assert removed_enum_symbols(old, current) == []
    assert changed_logical_types(old, current) == []


@pytest.mark.parametrize("stem", STEMS)
def test_current_schema_is_its_newest_released_version(stem: str) -> None:
    """Byte for byte: a change to a schema without its new history file fails here."""
    history = released_versions(stem)
    assert [v.version for v in history] == list(range(1, len(history) + 1))
    assert history[-1].text == (SCHEMAS_DIR / f"{stem}.avsc").read_text("utf-8")


@pytest.mark.parametrize(("stem", "version"), PAIRS)
def test_every_released_version_is_known_to_the_codec(stem: str, version: int) -> None:
    """codec_for knows the fingerprint of every released writer schema, so what the gate lets
    consumers rely on (every version decodes) holds in the worker too."""
    old = ParsedSchema.from_json(released_versions(stem)[version - 1].json)
    assert old.fingerprint in codec_for(NAME_OF[stem]).writer_fingerprints


# -- refusals and acceptance, on copies ------------------------------------------------------


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    """A copy of the repository's schemas/ and their history."""
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, target)
    return target


def load(schemas: Path, stem: str) -> dict[str, Any]:
    return json.loads((schemas / f"{stem}.avsc").read_text("utf-8"))


def release(schemas: Path, stem: str, schema: dict[str, Any]) -> str:
    """Change the current schema and add it as the next version, as a developer would."""
    text = json.dumps(schema, indent=2) + "\n"
    (schemas / f"{stem}.avsc").write_text(text, "utf-8")
    n = len(released_versions(stem, schemas)) + 1
    (schemas / "history" / stem / f"v{n}.avsc").write_text(text, "utf-8")
    return f"v{n}"


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def refusals(schemas: Path) -> dict[tuple[str, str], str]:
    """(check, subject) -> the reasons, of every finding."""
    return {(f.check, f.subject): "\n".join(f.reasons) for f in check_repository(schemas)}


def test_accepts_a_new_optional_field_with_a_default(schemas: Path) -> None:
    event = load(schemas, "browsing_event")
    event["fields"].append(
        {"name": "referrer", "type": ["null", "string"], "default": None, "doc": "new"}
    )
    assert release(schemas, "browsing_event", event) == "v3"
    assert check_repository(schemas) == []
    lines: list[str] = []
    assert run(schemas, out=lines.append) == 0
    assert lines == [
        f"ok: 4 schemas against {RELEASED + 1} released versions (backward and forward) in "
        f"{schemas}/history; 0 refused"
    ]


def test_refuses_a_new_required_field_without_a_default(schemas: Path) -> None:
    """Backward: today's reader cannot fill the field for old records. (Forward passes: an old
    reader skips a field it does not know.)"""
    event = load(schemas, "browsing_event")
    event["fields"].append({"name": "referrer", "type": "string"})
    release(schemas, "browsing_event", event)
    found = refusals(schemas)
    for old in ("v1", "v2"):
        pair = (
            f"reader schemas/browsing_event.avsc / writer schemas/history/browsing_event/{old}.avsc"
        )
        assert "reader_field_missing_default_value" in found["backward", pair]
        assert "referrer" in found["backward", pair]
    assert {check for check, _ in found} == {"backward"}


def test_refuses_a_removed_enum_symbol(schemas: Path) -> None:
    """EventType has a default (VIEW), so Avro resolution reads a removed symbol as VIEW and
    accepts the change; the project's rule refuses it. Without the enum default, Avro refuses it
    too (backward: old records carry the symbol)."""
    event = load(schemas, "browsing_event")
    field(event, "event_type")["type"]["symbols"].remove("REMOVE_FROM_CART")
    release(schemas, "browsing_event", event)
    found = refusals(schemas)
    assert {check for check, _ in found} == {"enum symbols"}
    pair = "schemas/history/browsing_event/v1.avsc -> schemas/browsing_event.avsc"
    assert (
        "com.shop.recommender.EventType lost symbols ['REMOVE_FROM_CART']"
        in found["enum symbols", pair]
    )

    del field(event, "event_type")["type"]["default"]
    (schemas / "browsing_event.avsc").write_text(json.dumps(event), "utf-8")
    (schemas / "history" / "browsing_event" / "v3.avsc").write_text(json.dumps(event), "utf-8")
    found = refusals(schemas)
    pair = "reader schemas/browsing_event.avsc / writer schemas/history/browsing_event/v1.avsc"
    assert "missing_enum_symbols" in found["backward", pair]
    assert "REMOVE_FROM_CART" in found["backward", pair]


def test_refuses_an_int_field_retyped_as_string(schemas: Path) -> None:
    purchase = load(schemas, "purchase_outcome")
    field(purchase, "quantity").update(type="string", default="1")
    release(schemas, "purchase_outcome", purchase)
    found = refusals(schemas)
    old = "schemas/history/purchase_outcome/v1.avsc"
    backward = found["backward", f"reader schemas/purchase_outcome.avsc / writer {old}"]
    forward = found["forward", f"reader {old} / writer schemas/purchase_outcome.avsc"]
    assert "type_mismatch" in backward and "reader type: string" in backward
    assert "writer type: int" in backward and "/fields/4/type" in backward
    assert "type_mismatch" in forward and "reader type: int" in forward


def test_refuses_a_renamed_field_without_an_alias(schemas: Path) -> None:
    """Both ways: each reader misses the field under its own name."""
    purchase = load(schemas, "purchase_outcome")
    field(purchase, "product_id")["name"] = "item_id"
    release(schemas, "purchase_outcome", purchase)
    found = refusals(schemas)
    old = "schemas/history/purchase_outcome/v1.avsc"
    backward = found["backward", f"reader schemas/purchase_outcome.avsc / writer {old}"]
    forward = found["forward", f"reader {old} / writer schemas/purchase_outcome.avsc"]
    assert "reader_field_missing_default_value" in backward and "item_id" in backward
    assert "reader_field_missing_default_value" in forward and "product_id" in forward


def test_refuses_a_renamed_field_even_with_an_alias(schemas: Path) -> None:
    """The alias lets today's reader read old records, but readers of released versions do not
    know the new name: forward compatibility fails."""
    purchase = load(schemas, "purchase_outcome")
    field(purchase, "product_id").update(name="item_id", aliases=["product_id"])
    release(schemas, "purchase_outcome", purchase)
    found = refusals(schemas)
    assert {check for check, _ in found} == {"forward"}


def test_refuses_a_changed_logical_type(schemas: Path) -> None:
    """Same long on the wire, so Avro resolution accepts it; microseconds read as milliseconds
    would be 1000 times off."""
    event = load(schemas, "browsing_event")
    field(event, "event_time")["type"]["logicalType"] = "timestamp-micros"
    release(schemas, "browsing_event", event)
    found = refusals(schemas)
    assert {check for check, _ in found} == {"logical types"}
    assert (
        "BrowsingEvent.event_time: logicalType ['timestamp-millis'] -> ['timestamp-micros']"
        in (
            found[
                "logical types",
                "schemas/history/browsing_event/v1.avsc -> schemas/browsing_event.avsc",
            ]
        )
    )


def test_refuses_a_default_of_the_wrong_type(schemas: Path) -> None:
    """A union's default is a value of its first branch: "none" is not a null."""
    event = load(schemas, "browsing_event")
    event["fields"].append({"name": "referrer", "type": ["null", "string"], "default": "none"})
    release(schemas, "browsing_event", event)
    found = refusals(schemas)
    assert (
        "BrowsingEvent.referrer: default 'none' is not a \"null\""
        in found["defaults", "schemas/browsing_event.avsc"]
    )


def test_refuses_a_change_without_its_history_file(schemas: Path) -> None:
    """The compatible change of the first test, but the current file edited alone."""
    event = load(schemas, "browsing_event")
    event["fields"].append({"name": "referrer", "type": ["null", "string"], "default": None})
    (schemas / "browsing_event.avsc").write_text(json.dumps(event), "utf-8")
    found = refusals(schemas)
    reason = found["history", "schemas/browsing_event.avsc"]
    assert "differs from the newest released version schemas/history/browsing_event/v2.avsc" in (
        reason
    )
    assert "schemas/history/browsing_event/v3.avsc" in reason


def test_refuses_a_gap_a_deleted_schema_and_another_record(schemas: Path) -> None:
    history = schemas / "history"
    (history / "accuracy_report" / "v2.avsc").unlink()
    (schemas / "product_suggestion.avsc").unlink()
    other = load(schemas, "purchase_outcome")
    other["name"] = "Refund"
    (history / "purchase_outcome" / "v1.avsc").write_text(json.dumps(other), "utf-8")
    found = refusals(schemas)
    kept = [n for stem, n in PAIRS if stem == "accuracy_report" and n != 2]
    assert f"versions {kept}: not 1..N" in found["history", "schemas/history/accuracy_report/"]
    assert (
        "a released schema is never deleted"
        in found["history", "schemas/history/product_suggestion/"]
    )
    assert (
        "is com.shop.recommender.Refund, not com.shop.recommender.PurchaseOutcome"
        in found["history", "schemas/history/purchase_outcome/v1.avsc"]
    )


def test_command_prints_the_refused_pair_and_why_and_exits_1(
    schemas: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    purchase = load(schemas, "purchase_outcome")
    field(purchase, "quantity").update(type="string", default="1")
    release(schemas, "purchase_outcome", purchase)
    code = cli.main(["schemas", "check", "--schemas-dir", str(schemas), "--log-level", "warning"])
    out = capsys.readouterr().out
    assert code == 1
    assert (
        "purchase_outcome: backward refused: reader schemas/purchase_outcome.avsc / writer "
        "schemas/history/purchase_outcome/v1.avsc\n  - type_mismatch (the writer's type cannot be "
        "read as the reader's): reader type: string not compatible with writer type: int "
        "(at /fields/4/type)"
    ) in out
    assert (
        "purchase_outcome: forward refused: reader schemas/history/purchase_outcome/v1.avsc" in out
    )
    assert out.rstrip().endswith("2 refused")
    assert (
        out.rstrip()
        .splitlines()[-1]
        .startswith(f"REFUSED: 4 schemas against {RELEASED + 1} released")
    )


def test_command_exits_0_on_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schemas", "check", "--log-level", "warning"]) == 0
    assert capsys.readouterr().out.startswith("ok: 4 schemas against ")


# -- the checker agrees with the codec's library ------------------------------------------------

PRIMITIVES = ["boolean", "int", "long", "float", "double", "bytes", "string"]
SAMPLE = {
    "boolean": True,
    "int": 7,
    "long": 1 << 40,
    "float": 1.5,
    "double": 2.25,
    "bytes": b"ab",
    "string": "ab",
}


@st.composite
def evolutions(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A writer record of primitive fields and a reader derived from it by random edits: fields
    retyped, dropped, renamed, or added with or without a default."""
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=5, unique=True))
    writer_fields = [{"name": n, "type": draw(st.sampled_from(PRIMITIVES))} for n in names]
    reader_fields = []
    for f in writer_fields:
        edit = draw(st.sampled_from(["keep", "retype", "drop", "rename"]))
        if edit == "keep":
            reader_fields.append(dict(f))
        elif edit == "retype":
            reader_fields.append({"name": f["name"], "type": draw(st.sampled_from(PRIMITIVES))})
        elif edit == "rename":
            reader_fields.append({"name": f["name"].upper(), "type": f["type"]})
    for n in draw(st.lists(st.sampled_from("uvwxyz"), max_size=2, unique=True)):
        kind = draw(st.sampled_from(PRIMITIVES))
        new: dict[str, Any] = {"name": n, "type": kind}
        if draw(st.booleans()):
            new["default"] = SAMPLE[kind] if kind != "bytes" else "ab"
        reader_fields.append(new)
    record = {"type": "record", "name": "R", "namespace": "t"}
    return {**record, "fields": writer_fields}, {**record, "fields": reader_fields}


@settings(max_examples=300, deadline=None)
@given(pair=evolutions())
def test_checker_verdict_matches_fastavro_resolution(pair: tuple[dict, dict]) -> None:
    """The gate's "compatible" is exactly "fastavro resolves a record written with the writer
    into the reader" (Avro's promotions int->long->float->double, string<->bytes; a reader field
    missing from the writer needs a default)."""
    writer, reader = pair
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body,
        fastavro.parse_schema(copy.deepcopy(writer)),
        {f["name"]: SAMPLE[f["type"]] for f in writer["fields"]},
    )
    body.seek(0)
    try:
        fastavro.schemaless_reader(
            body, fastavro.parse_schema(copy.deepcopy(writer)), fastavro.parse_schema(reader)
        )
        resolved = True
    except SchemaResolutionError:
        resolved = False
    assert (resolution_problems(reader, writer) == []) is resolved


def test_defaults_of_the_repository_are_valid() -> None:
    """The rule's other side: every default of the four schemas is a value of its type."""
    for current in current_schemas():
        assert invalid_defaults(current.json) == []
