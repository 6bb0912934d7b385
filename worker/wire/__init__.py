"""Bytes on the wire: Avro codecs for both framings (Confluent and single-object), the batched
suggestion writer, the session changelog codec, the schema registry client, and the ``.avsc``
schemas (``schemas/``, package data)."""
