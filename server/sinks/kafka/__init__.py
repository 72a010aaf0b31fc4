"""The Kafka sink: one record per accepted order, rejected orders to the
dead-letter topic, acked with acks=all (sink.py says how).

    config     KafkaConfig, codecs and their levels, the records' constants
    errors     producer failures -> IngestError, the one mapping
    lanes      the encode stage: a batch's records into per-partition lanes of native record batches
    logs       aiokafka's reconnect errors, rate-limited
    producer   the aiokafka producer made, connected and retired; topics and their limits at start
    sink       KafkaSink: publish, segments handed to the producer and acked, health, producer replacement
"""

from keystone_ingest.server.errors import ProducerReplaced
from keystone_ingest.server.sinks.kafka.config import COMPRESSIONS, CONTENT_TYPE, KafkaConfig, check_compression
from keystone_ingest.server.sinks.kafka.errors import classify
from keystone_ingest.server.sinks.kafka.sink import KafkaSink

__all__ = [
    "COMPRESSIONS",
    "CONTENT_TYPE",
    "KafkaConfig",
    "KafkaSink",
    "ProducerReplaced",
    "check_compression",
    "classify",
]
