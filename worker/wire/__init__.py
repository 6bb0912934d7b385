"""Bytes on the wire: Avro codecs for both framings (Confluent and single-object) and the readers
they compile for batches, the batched suggestion writer, the session changelog codec, and the
``.avsc`` schemas (``schemas/``, package data). The schema registry client they use is in the
Kafka edge, ``worker.kafka.schema_registry``.
"""
