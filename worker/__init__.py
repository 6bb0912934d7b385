"""Real-time product recommender on Apache Kafka.

The pure core (records, codec, features, candidates, model, accuracy, pipeline) knows nothing of
Kafka, HTTP or the environment; the edges (serve, monitor, train, simulate, cli, kafka/) do the I/O.
"""

__version__ = "0.1.0"
