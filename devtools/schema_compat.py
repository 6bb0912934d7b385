"""``worker-dev schemas check``: the schema compatibility gate (README, section "Schemas").

Every record schema ``schemas/<schema>.avsc`` keeps each version ever released in
``schemas/history/<schema>/v1.avsc``, ``v2.avsc``, ... A change to a schema passes when:

1. **the history is whole**: versions ``v1`` to ``vN`` without a gap, each a valid schema of the
   same record (full name), the newest byte-for-byte equal to the current file (so a changed
   schema needs its new version added to the history, and a released version is never edited);
2. **backward**: the current schema, as the reader, reads data written with every released
   version (a new consumer reads the topic's old records);
3. **forward**: every released version, as the reader, reads data written with the current
   schema (a consumer not yet upgraded reads the new records);
4. **the project's rules**, which schema resolution allows but a consumer would not notice:

   * no enum symbol of a released version is removed: with the enum's ``default`` the reader
     reads a removed symbol as that default (``REMOVE_FROM_CART`` would become ``VIEW``);
   * a field's ``logicalType`` never changes: resolution ignores logical types, so
     ``timestamp-millis`` to ``timestamp-micros`` reads the same long with another meaning;
   * every field default is a valid value of the field's type (of the first branch of a union,
     as readers before the Avro 1.12 specification require): neither parser used here checks it,
     and a reader fills the invalid value into old records.

Steps 2 and 3 are the Avro specification's schema resolution rules as Apache Avro's own Python
package implements them (:class:`avro.compatibility.ReaderWriterCompatibilityChecker`, a port of
the Java ``SchemaCompatibility``), not a re-implementation. Only its verdicts are used: ``avro``
computes other fingerprints than the specification's (README, "Writing events from other
languages"); fingerprints stay fastavro's (:mod:`worker.wire.codec`).

Repository tooling only: the product never imports it, and ``avro`` is a dependency of the
``dev`` extra, not of the worker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.errors
import avro.schema
import fastavro
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
)
from fastavro.validation import validate

#: The repository's schemas (devtools runs from the checkout: ``pip install -e devtools``).
SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"

_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.avsc")

#: What each kind of incompatibility of the Avro checker means, for the report.
_WHY = {
    SchemaIncompatibilityType.reader_field_missing_default_value: (
        "the reader has a field the writer lacks, and it has no default"
    ),
    SchemaIncompatibilityType.missing_enum_symbols: (
        "the writer has enum symbols the reader lacks, and the reader's enum has no default"
    ),
    SchemaIncompatibilityType.type_mismatch: "the writer's type cannot be read as the reader's",
    SchemaIncompatibilityType.missing_union_branch: (
        "the writer may write a type the reader's union lacks"
    ),
    SchemaIncompatibilityType.name_mismatch: "a named type was renamed without an alias",
    SchemaIncompatibilityType.fixed_size_mismatch: "a fixed type changed size",
}


@dataclass(frozen=True)
class SchemaVersion:
    """One file of a schema: the current one or a released version."""

    schema: str  # the file stem, e.g. "browsing_event"
    label: str  # where it is, relative to the repository: "schemas/history/browsing_event/v1.avsc"
    text: str
    json: Any
    version: int | None = None  # N of a released version's v<N>.avsc; None for the current file


@dataclass(frozen=True)
class Finding:
    """A refused check: which schema, which pair (reader and writer) or file, and why."""

    schema: str
    check: str  # "history", "backward", "forward", "enum symbols", "logical types", "defaults"
    subject: str  # "reader <file> / writer <file>", or the file concerned
    reasons: tuple[str, ...]

    def render(self) -> str:
        lines = [f"{self.schema}: {self.check} refused: {self.subject}"]
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


# -- reading the files ----------------------------------------------------------------------------


def _read(path: Path, schema: str, root: Path, version: int | None = None) -> SchemaVersion:
    text = path.read_text(encoding="utf-8")
    label = f"{root.name}/{path.relative_to(root).as_posix()}"
    return SchemaVersion(schema, label, text, json.loads(text), version)


def current_schemas(schemas_dir: Path = SCHEMAS_DIR) -> list[SchemaVersion]:
    """The current schemas, ``schemas/*.avsc``, by file name."""
    return [_read(p, p.stem, schemas_dir) for p in sorted(schemas_dir.glob("*.avsc"))]


def released_versions(schema: str, schemas_dir: Path = SCHEMAS_DIR) -> list[SchemaVersion]:
    """The released versions of a schema, oldest first (v2 before v10); [] without a history.

    Raises:
        ValueError: a file of the history folder is not named ``v<N>.avsc``.
    """
    folder = schemas_dir / "history" / schema
    if not folder.is_dir():
        return []
    numbered = []
    for path in folder.iterdir():
        match = _VERSION_FILE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path}: a history file is named v<N>.avsc (N from 1)")
        numbered.append((int(match.group(1)), path))
    return [_read(path, schema, schemas_dir, n) for n, path in sorted(numbered)]


# -- the checks -------------------------------------------------------------------------------


def _full_name(node: Mapping[str, Any], namespace: str | None) -> str:
    name = str(node["name"])
    if "." in name:
        return name
    space = node.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _named_types(node: Any, namespace: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every named type defined in a schema (records, enums, fixed), with its full name."""
    if isinstance(node, list):
        for branch in node:
            yield from _named_types(branch, namespace)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        full = _full_name(node, namespace)
        yield full, node
        inner = full.rpartition(".")[0] or None
        for field in node.get("fields", ()):
            yield from _named_types(field["type"], inner)
    elif kind == "array":
        yield from _named_types(node["items"], namespace)
    elif kind == "map":
        yield from _named_types(node["values"], namespace)
    elif isinstance(kind, (dict, list)):
        yield from _named_types(kind, namespace)


def _logical_types(node: Any) -> frozenset[str]:
    """The logical types a field's type carries, not looking inside named records."""
    if isinstance(node, list):
        return frozenset().union(*(_logical_types(branch) for branch in node))
    if not isinstance(node, dict):
        return frozenset()
    kind = node.get("type")
    found = {node["logicalType"]} if "logicalType" in node else set()
    if kind == "array":
        found |= _logical_types(node["items"])
    elif kind == "map":
        found |= _logical_types(node["values"])
    elif isinstance(kind, (dict, list)):
        found |= _logical_types(kind)
    return frozenset(found)


def resolution_problems(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (Avro schema resolution,
    Apache Avro's checker); [] when it can.

    Raises:
        avro.errors.SchemaParseException: either is not a valid Avro schema.
    """
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = list(dict.fromkeys(result.incompatibilities))
    # The checker's messages and locations are sets, not paired with the kinds: all are shown.
    where = sorted(result.locations - {"/"}) or ["/"]
    return [
        f"{kind.value} ({_WHY[kind]}): {'; '.join(sorted(result.messages))} (at {', '.join(where)})"
        for kind in kinds
    ]


def removed_enum_symbols(old: Any, new: Any) -> list[str]:
    """Enum symbols of ``old`` that the same-named enum of ``new`` lacks."""
    new_enums = {name: node for name, node in _named_types(new) if node["type"] == "enum"}
    problems = []
    for name, node in _named_types(old):
        if node["type"] != "enum" or name not in new_enums:
            continue
        gone = [s for s in node["symbols"] if s not in new_enums[name]["symbols"]]
        if gone:
            problems.append(
                f"enum {name} lost symbols {gone}: readers with the enum's default would read "
                "them as that default, without the specification's checks noticing"
            )
    return problems


def changed_logical_types(old: Any, new: Any) -> list[str]:
    """Fields of a record in both schemas whose logical types differ."""

    def by_field(schema: Any) -> dict[tuple[str, str], frozenset[str]]:
        return {
            (name, field["name"]): _logical_types(field["type"])
            for name, node in _named_types(schema)
            if node["type"] in ("record", "error")
            for field in node["fields"]
        }

    before, after = by_field(old), by_field(new)
    return [
        f"field {record}.{field}: logicalType {sorted(before[record, field]) or 'none'} -> "
        f"{sorted(after[record, field]) or 'none'} (the same encoding, read with another meaning)"
        for record, field in sorted(before.keys() & after.keys())
        if before[record, field] != after[record, field]
    ]


def invalid_defaults(schema: Any) -> list[str]:
    """Field defaults that are not a value of the field's type (a union's first branch)."""
    named: dict[str, Any] = {}
    fastavro.parse_schema(schema, named_schemas=named)
    problems = []
    for name, node in _named_types(schema):
        if node["type"] not in ("record", "error"):
            continue
        for field in node["fields"]:
            if "default" not in field:
                continue
            kind = field["type"][0] if isinstance(field["type"], list) else field["type"]
            parsed = fastavro.parse_schema(kind, named_schemas=dict(named))
            if not validate(field["default"], parsed, raise_errors=False):
                problems.append(
                    f"field {name}.{field['name']}: default {field['default']!r} is not a "
                    f"{json.dumps(kind)}"
                )
    return problems


def check_schema(current: SchemaVersion, history: list[SchemaVersion]) -> list[Finding]:
    """Every check of one schema against its released versions; [] when the change passes."""
    name = current.schema
    if not history:
        return [
            Finding(name, "history", current.label, ("no released version: add it as v1.avsc",))
        ]
    findings = []
    problems = [f"{current.label}: {p}" for p in invalid_defaults(current.json)]
    if problems:
        findings.append(Finding(name, "defaults", current.label, tuple(problems)))
    newest = history[-1]
    if newest.text != current.text:
        findings.append(
            Finding(
                name,
                "history",
                current.label,
                (
                    f"differs from the newest released version {newest.label}: a change is "
                    f"released as a new version, schemas/history/{name}/v{len(history) + 1}.avsc "
                    "(a copy of the current file); released versions are never edited",
                ),
            )
        )
    numbers = [v.version for v in history]
    if numbers != list(range(1, len(history) + 1)):
        findings.append(
            Finding(name, "history", f"schemas/history/{name}/", (f"versions {numbers}: not 1..N",))
        )
    full = _full_name(current.json, None)
    for old in history:
        if _full_name(old.json, None) != full:
            findings.append(
                Finding(
                    name, "history", old.label, (f"is {_full_name(old.json, None)}, not {full}",)
                )
            )
            continue
        pair = f"reader {current.label} / writer {old.label}"
        backward = resolution_problems(current.json, old.json)
        if backward:
            findings.append(Finding(name, "backward", pair, tuple(backward)))
        pair = f"reader {old.label} / writer {current.label}"
        forward = resolution_problems(old.json, current.json)
        if forward:
            findings.append(Finding(name, "forward", pair, tuple(forward)))
        pair = f"{old.label} -> {current.label}"
        for check, found in (
            ("enum symbols", removed_enum_symbols(old.json, current.json)),
            ("logical types", changed_logical_types(old.json, current.json)),
        ):
            if found:
                findings.append(Finding(name, check, pair, tuple(found)))
    return findings


def check_repository(schemas_dir: Path = SCHEMAS_DIR) -> list[Finding]:
    """Every schema of ``schemas_dir`` against its history, and no history without a schema.

    Raises:
        OSError: a file cannot be read.
        ValueError: a file is not JSON, or a history file is misnamed.
        avro.errors.SchemaParseException: a file is not a valid Avro schema.
    """
    currents = current_schemas(schemas_dir)
    findings = []
    for current in currents:
        findings += check_schema(current, released_versions(current.schema, schemas_dir))
    history_dir = schemas_dir / "history"
    known = {c.schema for c in currents}
    orphans = sorted(
        p.name for p in (history_dir.iterdir() if history_dir.is_dir() else ()) if p.is_dir()
    )
    for orphan in (o for o in orphans if o not in known):
        findings.append(
            Finding(
                orphan,
                "history",
                f"schemas/history/{orphan}/",
                (
                    f"no current schemas/{orphan}.avsc: a released schema is never deleted "
                    "(its consumers still read its records)",
                ),
            )
        )
    return findings


def run(schemas_dir: Path = SCHEMAS_DIR, out: Any = print) -> int:
    """``worker-dev schemas check``: print each refused pair and why; exit code 1 if any, else 0.

    Raises:
        as :func:`check_repository`.
    """
    try:
        findings = check_repository(schemas_dir)
    except avro.errors.SchemaParseException as exc:
        out(f"not a valid Avro schema: {exc}")
        return 1
    for finding in findings:
        out(finding.render())
    currents = current_schemas(schemas_dir)
    versions = sum(len(released_versions(c.schema, schemas_dir)) for c in currents)
    verdict = "REFUSED" if findings else "ok"
    out(
        f"{verdict}: {len(currents)} schemas against {versions} released versions "
        f"(backward and forward) in {schemas_dir}/history; {len(findings)} refused"
    )
    return 1 if findings else 0
