"""The Kafka edge: client construction, topic admin, dead letters and the commit protocol.

Nothing outside this package and the loops (``worker.serve``, ``worker.monitor``) imports
confluent_kafka.
"""
