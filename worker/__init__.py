"""Real-time product recommender on Apache Kafka: what production installs.

Layers, each importing only those below it (``.importlinter`` holds the contract in CI):

* ``cli``, ``config``: the ``worker`` command and its settings;
* ``apps``: the programs (``serve`` the worker loop, ``monitor``, ``train``, ``simulate``);
* ``kafka``: the Kafka edge (clients, admin, the commit protocol, the session changelog, watches,
  dead letters, the schema registry client);
* ``ops``: logging, metrics and the health endpoints;
* ``model``: model artifacts and scoring backends;
* ``wire``: Avro codecs, the suggestion writer, the session codec and the ``.avsc`` schemas as
  package data;
* ``core``: records, errors, the catalogue tables, sessions, candidates, features, the pipeline,
  accuracy and the clickstream model: pure (no Kafka, HTTP or environment).

``worker.testing`` holds in-memory stand-ins for tests. The development tooling (local broker,
chaos harness, benchmark, demo) is the separate ``devtools`` distribution.
"""

__version__ = "0.1.0"
