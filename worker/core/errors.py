"""Exception hierarchy.

Two families under one root:

* ``DataError``: a permanent problem with one input record (bad bytes, wrong schema, unusable
  event). The record goes to the dead-letter topic with the error's class and message, and
  processing goes on.
* ``InfrastructureError``: the broker, the model artifact or the configuration is not usable.
  These fail fast (or are retried with a bound by the caller); they never reach the dead-letter
  topic.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error this package raises on purpose."""


# -- data errors: one bad record, dead-lettered ------------------------------------------------


class DataError(WorkerError):
    """A permanent problem with one input record; it is dead-lettered and processing goes on."""


class DecodeError(DataError):
    """The bytes are not a record this reader understands."""


class UnknownFramingError(DecodeError):
    """Neither Confluent framing (magic 0x00) nor Avro single-object encoding (marker C3 01)."""


class UnknownSchemaError(DecodeError):
    """The framing names a schema id or fingerprint that this reader cannot resolve."""


class SchemaMismatchError(DecodeError):
    """The writer schema is known but is not a version of the record type this reader expects."""


class CorruptPayloadError(DecodeError):
    """The Avro body is truncated, has trailing bytes, or does not parse."""


class OversizedRecordError(DataError):
    """The record is larger than the configured maximum."""


class InvalidRecordError(DataError):
    """The record decodes but breaks a rule: empty ids, key mismatch, absurd timestamp, ..."""


# -- infrastructure errors: fail fast or retry with a bound ------------------------------------


class InfrastructureError(WorkerError):
    """Something outside one record is wrong: configuration, broker, model artifact."""


class ConfigError(InfrastructureError):
    """A setting is missing or invalid."""


class UnusableDatasetError(ConfigError):
    """``worker train`` refuses a dataset: more of its records are unusable than
    ``--max-dropped-share`` allows, or too few are usable to train on."""


class ModelLoadError(InfrastructureError):
    """The model artifact is missing, incomplete or of an incompatible version."""


class SchemaRegistryError(InfrastructureError):
    """The schema registry could not be reached or answered with an error."""


class BrokerError(InfrastructureError):
    """The cluster is unreachable, refused the credentials, or a fatal client error occurred."""


class PrometheusError(InfrastructureError):
    """The Prometheus HTTP API (``worker report --prometheus-url``) could not be reached or
    answered with an error."""
