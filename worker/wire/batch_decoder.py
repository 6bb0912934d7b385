"""Readers specialised to one record schema, for decoding micro-batches without a fastavro call
per record.

``fastavro.schemaless_reader`` walks the parsed schema for every record: about 6 µs of the
worker's per-event budget for an eight-field ``BrowsingEvent``. :func:`compile_reader` walks
the schema once instead and generates the Python source of a reader for exactly that schema
(straight-line code: one byte index for the common one-byte varint, ``struct`` for doubles, one
slice and ``bytes.decode`` per string), compiled once with ``exec``, the way specialising
serialisers do.

The reader only has to be right on well-formed bodies. On anything else (a truncated body, a
bad UTF-8 string, an enum or union index out of range, a negative length, a varint that
overflows 64 bits) it raises and the caller decodes that one record with fastavro, which gives
the error (or, for the few inputs fastavro is lenient with, the value) it always gave: the fast
path never has to reproduce fastavro's error messages, only its values on valid input. It reads
the writer's own schema, so it serves payloads whose writer *is* the reader schema; other
writers need Avro schema resolution and stay with fastavro.

Logical types are ignored, as by the codec (``timestamp-millis`` reads as ``int``). Types with
no generator here (``fixed``, arrays and maps of items that may take no bytes) make
:func:`compile_reader` return None: the codec then uses fastavro for every record.

Pure: no Kafka, no environment.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

#: A compiled reader: ``read(buf, pos) -> (record, end)``; raises on a malformed body.
Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]

_PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))
_MASK64 = (1 << 64) - 1


class MalformedBody(ValueError):
    """The body is not a well-formed encoding of the schema (the caller asks fastavro why)."""


class _Unsupported(Exception):
    """The schema uses a type the generator does not handle."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro ``int``/``long``) of any length up to 10 bytes, and the position
    after it.

    Raises:
        MalformedBody: more than 64 bits (fastavro's compiled reader would wrap them).
        IndexError: the buffer ends inside the varint.
    """
    b = buf[pos]
    n = b & 0x7F
    shift = 7
    pos += 1
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise MalformedBody("varint longer than 10 bytes")
    if n > _MASK64:
        raise MalformedBody("varint over 64 bits")
    return (n >> 1) ^ -(n & 1), pos


class _Generator:
    """Emits the source of one function per record type (records may nest or recur by name)."""

    def __init__(self) -> None:
        self.named: dict[str, dict[str, Any]] = {}  # full name -> schema JSON
        self.functions: dict[str, str] = {}  # full name -> generated function name
        self.sources: list[str] = []
        self.constants: dict[str, Any] = {}
        self._counter = 0

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def constant(self, value: Any) -> str:
        name = self.fresh("_k")
        self.constants[name] = value
        return name

    # -- named types -----------------------------------------------------------------------------

    @staticmethod
    def full_name(schema: Mapping[str, Any], namespace: str) -> tuple[str, str]:
        name = str(schema["name"])
        if "." in name:
            return name, name.rpartition(".")[0]
        ns = str(schema.get("namespace", namespace) or "")
        return (f"{ns}.{name}" if ns else name), ns

    def resolve(self, name: str, namespace: str) -> dict[str, Any]:
        for candidate in (f"{namespace}.{name}" if namespace else name, name):
            if candidate in self.named:
                return self.named[candidate]
        raise _Unsupported(f"unknown named type {name!r}")

    def record_function(self, schema: dict[str, Any], namespace: str) -> str:
        full, ns = self.full_name(schema, namespace)
        if full in self.functions:
            return self.functions[full]
        self.named[full] = schema
        fn = self.functions[full] = self.fresh("_record")
        lines = [f"def {fn}(buf, pos, L):"]
        names = []
        for field in schema["fields"]:
            var = self.fresh("v")
            self.emit(field["type"], var, ns, lines, 1)
            names.append((field["name"], var))
        items = ", ".join(f"{name!r}: {var}" for name, var in names)
        lines.append(f"    return {{{items}}}, pos")
        self.sources.append("\n".join(lines))
        return fn

    # -- one value -------------------------------------------------------------------------------

    def emit(self, schema: Any, target: str, namespace: str, out: list[str], depth: int) -> None:
        """Append lines that read one value of ``schema`` at ``pos`` into ``target``."""
        pad = "    " * depth
        if isinstance(schema, list):
            self.emit_union(schema, target, namespace, out, depth)
            return
        if isinstance(schema, dict):
            kind = schema.get("type")
            if isinstance(kind, (dict, list)):  # {"type": {...}} wraps a type
                self.emit(kind, target, namespace, out, depth)
                return
            if kind in _PRIMITIVES:
                self.emit(kind, target, namespace, out, depth)
                return
            if kind == "record" or kind == "error":
                fn = self.record_function(schema, namespace)
                out.append(f"{pad}{target}, pos = {fn}(buf, pos, L)")
                return
            if kind == "enum":
                full, _ = self.full_name(schema, namespace)
                self.named[full] = schema
                self.emit_enum(schema, target, out, depth)
                return
            if kind == "array":
                self.emit_blocks(schema["items"], None, target, namespace, out, depth)
                return
            if kind == "map":
                self.emit_blocks(schema["values"], "string", target, namespace, out, depth)
                return
            raise _Unsupported(f"type {kind!r}")
        if not isinstance(schema, str):
            raise _Unsupported(f"schema {schema!r}")
        if schema == "null":
            out.append(f"{pad}{target} = None")
        elif schema == "boolean":
            # 0 and 1 only: fastavro reads any other byte as True, and such bytes are no
            # encoding of a boolean, so they take the slow path.
            out += [
                f"{pad}b = buf[pos]",
                f"{pad}if b > 1:",
                f"{pad}    raise _Malformed('boolean byte')",
                f"{pad}{target} = b == 1",
                f"{pad}pos += 1",
            ]
        elif schema in ("int", "long"):
            self.emit_long(target, out, depth)
        elif schema == "double":
            out += [f"{pad}{target}, = _double(buf, pos)", f"{pad}pos += 8"]
        elif schema == "float":
            out += [f"{pad}{target}, = _float(buf, pos)", f"{pad}pos += 4"]
        elif schema in ("string", "bytes"):
            self.emit_length(out, depth)
            value = "buf[pos:end].decode()" if schema == "string" else "buf[pos:end]"
            out += [f"{pad}{target} = {value}", f"{pad}pos = end"]
        else:
            self.emit(self.resolve(schema, namespace), target, namespace, out, depth)

    def emit_long(self, target: str, out: list[str], depth: int) -> None:
        """Lines that read a zigzag varint: one byte (small ints, counts, indexes) without a
        loop, longer ones (epoch milliseconds take six bytes) in an inline loop, as
        :func:`read_varint`."""
        pad = "    " * depth
        out += [
            f"{pad}b = buf[pos]",
            f"{pad}if b < 128:",
            f"{pad}    {target} = (b >> 1) ^ -(b & 1)",
            f"{pad}    pos += 1",
            f"{pad}else:",
            f"{pad}    n = b & 127",
            f"{pad}    shift = 7",
            f"{pad}    pos += 1",
            f"{pad}    b = buf[pos]",
            f"{pad}    while b >= 128:",
            f"{pad}        n |= (b & 127) << shift",
            f"{pad}        shift += 7",
            f"{pad}        pos += 1",
            f"{pad}        b = buf[pos]",
            f"{pad}    n |= b << shift",
            f"{pad}    pos += 1",
            f"{pad}    if shift >= 63 and (shift > 63 or b > 1):",
            f"{pad}        raise _Malformed('varint over 64 bits')",
            f"{pad}    {target} = (n >> 1) ^ -(n & 1)",
        ]

    def emit_length(self, out: list[str], depth: int) -> None:
        """Lines that read a string/bytes length and leave the end of the data in ``end``."""
        pad = "    " * depth
        out += [
            f"{pad}b = buf[pos]",
            f"{pad}if b < 128:",
            f"{pad}    if b & 1:",
            f"{pad}        raise _Malformed('negative length')",
            f"{pad}    end = pos + 1 + (b >> 1)",
            f"{pad}    pos += 1",
            f"{pad}else:",
            f"{pad}    n, pos = _varint(buf, pos)",
            f"{pad}    if n < 0:",
            f"{pad}        raise _Malformed('negative length')",
            f"{pad}    end = pos + n",
            f"{pad}if end > L:",
            f"{pad}    raise _Malformed('truncated')",
        ]

    def emit_enum(self, schema: Mapping[str, Any], target: str, out: list[str], depth: int) -> None:
        pad = "    " * depth
        symbols = self.constant(tuple(schema["symbols"]))
        index = self.fresh("i")
        self.emit_long(index, out, depth)
        out += [
            f"{pad}if {index} < 0 or {index} >= {len(schema['symbols'])}:",
            f"{pad}    raise _Malformed('enum index')",
            f"{pad}{target} = {symbols}[{index}]",
        ]

    def emit_union(
        self, branches: list[Any], target: str, namespace: str, out: list[str], depth: int
    ) -> None:
        pad = "    " * depth
        index = self.fresh("i")
        self.emit_long(index, out, depth)
        for i, branch in enumerate(branches):
            out.append(f"{pad}{'if' if i == 0 else 'elif'} {index} == {i}:")
            self.emit(branch, target, namespace, out, depth + 1)
        out += [f"{pad}else:", f"{pad}    raise _Malformed('union index')"]

    def emit_blocks(
        self,
        items: Any,
        keys: str | None,
        target: str,
        namespace: str,
        out: list[str],
        depth: int,
    ) -> None:
        """An array (``keys`` None) or a map: blocks of items, each block a count (negative: its
        absolute value, then the block's size in bytes, which is skipped over as fastavro does),
        up to a zero count."""
        if self.min_bytes(items, namespace, set()) == 0:
            # Items of no bytes would let a corrupt count spin for ever; not in our schemas.
            raise _Unsupported("array or map of items that may take no bytes")
        pad = "    " * depth
        count, item = self.fresh("c"), self.fresh("x")
        out.append(f"{pad}{target} = {{}}" if keys else f"{pad}{target} = []")
        self.emit_long(count, out, depth)
        out.append(f"{pad}while {count}:")
        inner = pad + "    "
        out += [f"{inner}if {count} < 0:", f"{inner}    {count} = -{count}"]
        self.emit_long("_", out, depth + 2)
        # Each item takes a byte at least: a count beyond the bytes left is corrupt (and
        # would otherwise allocate before failing).
        out += [
            f"{inner}if {count} > L - pos:",
            f"{inner}    raise _Malformed('block count')",
            f"{inner}for _ in range({count}):",
        ]
        if keys:
            key = self.fresh("key")
            self.emit("string", key, namespace, out, depth + 2)
            self.emit(items, item, namespace, out, depth + 2)
            out.append(f"{inner}    {target}[{key}] = {item}")
        else:
            self.emit(items, item, namespace, out, depth + 2)
            out.append(f"{inner}    {target}.append({item})")
        self.emit_long(count, out, depth + 1)

    def min_bytes(self, schema: Any, namespace: str, seen: set[str]) -> int:
        """The fewest bytes a value of the schema can take (0 or 1 is all that matters)."""
        if isinstance(schema, list):
            return 1  # the branch index
        if isinstance(schema, dict):
            kind = schema.get("type")
            if isinstance(kind, (dict, list)) or kind in _PRIMITIVES:
                return self.min_bytes(kind, namespace, seen)
            if kind in ("record", "error"):
                full, ns = self.full_name(schema, namespace)
                if full in seen:
                    return 1  # recursion goes through a union or an array: not zero bytes
                seen = seen | {full}
                self.named.setdefault(full, schema)
                return min(1, sum(self.min_bytes(f["type"], ns, seen) for f in schema["fields"]))
            return 1  # enum index, array or map count
        if schema == "null":
            return 0
        if schema in _PRIMITIVES:
            return 1
        return self.min_bytes(self.resolve(schema, namespace), namespace, seen)


def compile_reader(schema: Mapping[str, Any]) -> Reader | None:
    """A reader for bodies written with exactly this record schema, or None when the schema has
    a type the generator does not cover (the caller keeps fastavro).

    The reader returns the record (a dict with the fields in schema order, as fastavro) and the
    position after it; it raises (:class:`MalformedBody`, ``IndexError``, ``struct.error``,
    ``UnicodeDecodeError``) on a body that is not a well-formed encoding.
    """
    gen = _Generator()
    try:
        if not isinstance(schema, Mapping) or schema.get("type") not in ("record", "error"):
            raise _Unsupported("not a record schema")
        top = gen.record_function(dict(schema), "")
    except (_Unsupported, KeyError, TypeError):
        return None
    source = "\n\n".join(
        [*gen.sources, f"def read(buf, pos):\n    return {top}(buf, pos, len(buf))"]
    )
    namespace: dict[str, Any] = {
        "_Malformed": MalformedBody,
        "_varint": read_varint,
        "_double": struct.Struct("<d").unpack_from,
        "_float": struct.Struct("<f").unpack_from,
        **gen.constants,
    }
    exec(compile(source, f"<batch reader of {schema.get('name')}>", "exec"), namespace)
    namespace["read"].__doc__ = source  # for whoever debugs it
    reader: Reader = namespace["read"]
    return reader
