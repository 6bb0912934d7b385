"""In-memory stand-ins for the product's outside world, for tests (here and in other teams'
projects): a schema registry, and fakes of the confluent-kafka consumer and producer that the
worker loop and the commit protocol are unit-tested against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fastavro.schema

from worker.core.errors import UnknownSchemaError


@dataclass
class InMemorySchemaRegistry:
    """A registry held in memory: ids start at 1 and identical schemas share an id."""

    _by_id: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    _by_canonical: dict[str, int] = field(default_factory=dict)

    def register(self, subject: str, schema_json: Mapping[str, Any]) -> int:
        canonical = fastavro.schema.to_parsing_canonical_form(dict(schema_json))
        if canonical not in self._by_canonical:
            schema_id = len(self._by_id) + 1
            self._by_id[schema_id] = schema_json
            self._by_canonical[canonical] = schema_id
        return self._by_canonical[canonical]

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any]:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"schema id {schema_id} is not registered") from None
