"""Apache Kafka from Maven Central, run as child JVMs (see `cluster`)."""

from keystone_ingest.dev.kafka.cluster import (
    KAFKA_VERSION,
    KafkaCluster,
    KafkaUnavailable,
    find_java,
    find_libs,
)

__all__ = ["KAFKA_VERSION", "KafkaCluster", "KafkaUnavailable", "find_java", "find_libs"]
