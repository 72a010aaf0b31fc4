"""Development-only programs: the Kafka brokers the embedded default, the tests
and the benchmark run (`dev.kafka`), librdkafka's mock cluster for machines
without Java and for tests that need an injected error code (`dev.mockbroker`).
Nothing here is on the ack path of a production server."""
