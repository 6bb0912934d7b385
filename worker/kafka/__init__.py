"""The Kafka edge: client construction, topic admin, the commit protocol, the session changelog,
watches over the clients, and dead letters.

Nothing outside this package and the loops (``worker.apps.serve``, ``worker.apps.monitor``) imports
confluent_kafka.
"""
