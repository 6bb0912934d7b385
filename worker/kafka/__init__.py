"""The Kafka edge: client construction, topic admin, the commit protocol, the session changelog,
watches over the clients, dead letters, and the schema registry client.

Only this package, the apps (the worker loop, the monitor, the simulator's producer) and the
fakes of ``worker.testing`` import confluent_kafka: an import-linter contract in pyproject.toml.
"""
