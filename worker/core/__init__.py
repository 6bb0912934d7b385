"""The pure core: records and errors, the catalogue tables, sessions, candidates, features, the
recommendation pipeline, accuracy math and the clickstream model. No Kafka, HTTP or environment:
everything here is a function of its arguments and is tested without a broker."""
