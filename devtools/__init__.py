"""Development tooling, never installed in production: the local Apache Kafka launcher
(``localkafka``), the chaos harness and its input feeder, the benchmark with its peers
(``bench``), and the demo. Command: ``worker-dev``."""
