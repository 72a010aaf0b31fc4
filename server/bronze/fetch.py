"""Raw Fetch requests: record-batch bytes per topic-partition, no Python object per record.

aiokafka's consumer parses every record into a Python object; the Bronze
worker hands the bytes to the native decoder instead. It uses the consumer
only for the group (membership, assignment, offset commits) with every
assigned partition paused, and sends Fetch requests itself through the
consumer's client, which keeps the connections, the metadata and the SASL/TLS
set-up. `AIOKafkaClient.send` and the Fetch request/response structs are
aiokafka internals: the version is pinned and tests/bronze exercise them
against the real broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

from aiokafka import errors as kafka_errors
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)

READ_UNCOMMITTED = 0
"""The producers are idempotent, not transactional: every appended record is final."""


@dataclass
class Fetched:
    records: bytes
    """Whole record batches from the requested offset on (the first may start
    before it; the last may be cut short)."""
    high_watermark: int
    error: type[kafka_errors.KafkaError] | None = None


class Fetcher:
    def __init__(
        self, client, *, max_wait_ms: int = 500, partition_max_bytes: int = 8 << 20, max_bytes: int = 64 << 20
    ) -> None:
        self.client = client
        self.max_wait_ms = max_wait_ms
        self.partition_max_bytes = partition_max_bytes
        self.max_bytes = max_bytes

    async def fetch(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, Fetched]:
        """One Fetch per leader, concurrently, for every partition at its position.
        Partitions whose leader is unknown or whose request failed are absent
        (metadata is refreshed for them); ask again."""
        by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
        stale = False
        for tp, offset in positions.items():
            leader = self.client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                stale = True
                continue
            by_node[leader][tp.topic].append((tp.partition, offset, self.partition_max_bytes))
        results: dict[TopicPartition, Fetched] = {}
        requests = [self._fetch_from(node, topics, results) for node, topics in by_node.items()]
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                stale = True
                log.warning("bronze: fetch failed", extra={"error": f"{type(outcome).__name__}: {outcome}"})
        if any(f.error is not None for f in results.values()):
            stale = True
        if stale:
            self.client.force_metadata_update()
        return results

    async def _fetch_from(
        self, node: int, topics: dict[str, list[tuple[int, int, int]]], results: dict[TopicPartition, Fetched]
    ) -> None:
        request = FetchRequest(self.max_wait_ms, 1, self.max_bytes, READ_UNCOMMITTED, list(topics.items()))
        response = await self.client.send(node, request)
        for topic, partitions in response.topics:
            for partition, error_code, high_watermark, *rest in partitions:
                error = kafka_errors.for_code(error_code)
                results[TopicPartition(topic, partition)] = Fetched(
                    rest[-1] or b"", high_watermark, None if error is kafka_errors.NoError else error
                )
