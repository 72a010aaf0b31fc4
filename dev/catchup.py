"""Until Bronze holds what Kafka holds: the sync point of the demo, the tests
and the benchmark before they read Bronze.

    wait_bronze_caught_up("127.0.0.1:9092", ["orders", "orders.dlq"], "file://./data/bronze")

Kafka's end offsets are taken once, at the start; Bronze's progress is read
from its commit markers (server/bronze/commits.py), as any worker reads it.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition
from keystone_ingest.server.bronze.commits import CommitLog
from keystone_ingest.server.bronze.storage import open_store


def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Kafka's end offset of every partition of `topics`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keystone-end-offsets"})
    try:
        ends = {}
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            for p in metadata.partitions:
                ends[(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return ends
    finally:
        consumer.close()


def wait_bronze_caught_up(
    bootstrap: str, topics: list[str], bronze_uri: str, timeout_s: float = 60.0, **store_options
) -> dict[tuple[str, int], int]:
    """Until Bronze's commit log covers every record the topics hold now
    (Kafka's end offsets, taken once at the start). Returns those offsets."""
    ends = end_offsets(bootstrap, topics)
    commits = CommitLog(open_store(bronze_uri, **store_options))
    deadline = time.monotonic() + timeout_s
    while True:
        progress = commits.progress()
        behind = {tp: (progress.get(tp, 0), end) for tp, end in ends.items() if progress.get(tp, 0) < end}
        if not behind:
            return ends
        if time.monotonic() > deadline:
            raise TimeoutError(f"Bronze behind Kafka after {timeout_s} s: (in Bronze, in Kafka) {behind}")
        time.sleep(0.1)
