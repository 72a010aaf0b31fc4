"""The aiokafka producer's lifecycle: made, connected, retired; and what the
sink asks the cluster once at start (topics, their max.message.bytes).

    producer = new_producer(config, batch_bytes, on_retry=count)
    partitions = await connect(producer, config)   # {topic: partition count}
    ...
    await retire(producer)                          # nothing leaves it afterwards

The sink (sink.py) decides when a producer is made and when it is retired
(start, replacement, stop); this file knows how, including the aiokafka 0.14
internals that takes (each named where it is used; the version is pinned).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from keystone_ingest.server.errors import SinkFailed
from keystone_ingest.server.sinks.kafka.config import KafkaConfig

log = logging.getLogger(__name__)


def _security(config: KafkaConfig) -> dict[str, Any]:
    return config.security.client_kwargs() if config.security is not None else {}


def new_producer(
    config: KafkaConfig, batch_bytes: int, on_retry: Callable[[str], None] | None = None
) -> AIOKafkaProducer:
    """An idempotent acks=all producer that takes the native, already
    compressed record batches of at most `batch_bytes`. `on_retry(error name)`
    is called each time aiokafka will send a Produce request again."""
    c = config
    producer = AIOKafkaProducer(
        bootstrap_servers=c.bootstrap,
        client_id=c.client_id,
        acks="all",
        enable_idempotence=True,
        # The record batches arrive compressed and framed (RecordBatchBuilder).
        compression_type=None,
        max_batch_size=batch_bytes,
        # The lanes close each record batch before handing it over, so
        # aiokafka's own linger would never apply; the sink's is in its lanes.
        linger_ms=0,
        request_timeout_ms=c.request_timeout_ms,
        retry_backoff_ms=c.retry_backoff_ms,
        **_security(c),
    )
    # aiokafka fails a record batch whose partition has no leader once the
    # batch is older than request_timeout_ms, idempotent or not; after a
    # full outage a restarted cluster names no leaders for a moment, and
    # batches that waited through it would fail then. Waiting is the
    # sink's to bound (send_timeout_s for the publish, replace_after_s for
    # the producer), so aiokafka's own expiry is switched off (an internal
    # of aiokafka 0.14's MessageAccumulator, read when a batch is added).
    producer._message_accumulator._batch_ttl = math.inf
    if on_retry is not None:
        _count_produce_retries(producer, on_retry)
    return producer


def _count_produce_retries(producer: AIOKafkaProducer, on_retry: Callable[[str], None]) -> None:
    # aiokafka retries failed Produce requests inside its sender and says
    # so only in its logs. Its client's send() is the one door every
    # request goes through: a retriable failure there (no connection,
    # timeout) or a retriable per-partition error in the answer (not
    # leader, not enough replicas, ...) means aiokafka sends those record
    # batches again.
    client = producer.client
    send = client.send

    async def send_and_count(node_id, request, **kwargs):
        if getattr(request, "API_KEY", None) != 0:  # not a Produce request
            return await send(node_id, request, **kwargs)
        try:
            response = await send(node_id, request, **kwargs)
        except KafkaError as exc:
            if exc.retriable:
                on_retry(type(exc).__name__)
            raise
        for _, partitions in getattr(response, "topics", ()):
            for partition_info in partitions:
                error = for_code(partition_info[1]) if partition_info[1] else None
                if error is not None and getattr(error, "retriable", False):
                    on_retry(error.__name__)
        return response

    client.send = send_and_count


async def connect(producer: AIOKafkaProducer, config: KafkaConfig) -> dict[str, int]:
    """Starts `producer` (which gets its producer id) and returns the partition
    count of both topics."""
    await producer.start()
    counts = {}
    for topic in (config.topic, config.dlq_topic):
        partitions = await producer.partitions_for(topic)
        if sorted(partitions) != list(range(len(partitions))):
            raise SinkFailed(f"topic {topic} has partitions {sorted(partitions)}, expected 0..n-1")
        counts[topic] = len(partitions)
    return counts


async def retire(producer: AIOKafkaProducer, timeout_s: float = 2.0) -> None:
    """Close `producer` for good: no Produce request leaves it afterwards.

    aiokafka's stop() first waits for every record batch it holds to be
    delivered, which an idempotent producer never gives up on while the
    brokers are down, and leaves its sender running when that wait is cut
    short. So this uses two aiokafka 0.14 internals: it cancels the sender
    task (which then sends nothing new and waits for its requests in
    flight; a second cancel after timeout_s abandons those) and marks the
    producer closed. The record batches it still holds never settle: the
    caller settles their segments.
    """
    sender = getattr(producer._sender, "sender_task", None)
    if sender is not None and not sender.done():
        sender.cancel()
        done, _ = await asyncio.wait({sender}, timeout=timeout_s)
        if not done:
            sender.cancel()
            await asyncio.wait({sender}, timeout=1.0)
    if sender is not None and sender.done() and not sender.cancelled() and sender.exception() is not None:
        log.debug("kafka producer's sender had failed", extra={"error": repr(sender.exception())})
    producer._closed = True  # what stop() sets; keeps aiokafka from warning about an unclosed producer
    try:
        await producer.client.close()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        assert task is not None  # a coroutine that was cancelled runs in a task
        if task.cancelling():
            raise
        # A close interrupted earlier left its connections' futures
        # cancelled; the connections themselves are closed.
    except Exception as exc:  # a connection that was already broken
        log.debug("kafka connections closed with an error", extra={"error": f"{type(exc).__name__}: {exc}"})


async def why_unreachable(config: KafkaConfig) -> BaseException | None:
    """aiokafka's bootstrap reports only that no broker could be reached.
    One connection of our own to the first bootstrap address, with the
    same security settings, says why: refused, TLS handshake, SASL
    credentials. None if that connection succeeds."""
    from aiokafka.conn import create_conn

    c = config
    host, _, port = c.bootstrap.split(",")[0].strip().rpartition(":")
    try:
        async with asyncio.timeout(c.request_timeout_ms / 1000):
            conn = await create_conn(
                host.strip("[]"),
                int(port),
                client_id=c.client_id,
                request_timeout_ms=c.request_timeout_ms,
                **_security(c),
            )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
    conn.close()
    return None


def _admin(config: KafkaConfig):
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(
        bootstrap_servers=config.bootstrap,
        client_id=config.client_id,
        request_timeout_ms=config.request_timeout_ms,
        **_security(config),
    )


async def create_topics(config: KafkaConfig) -> None:
    """Creates both topics unless they exist. Not fatal when it fails: the
    topics may exist or be auto-created; connect() finds out."""
    from aiokafka.admin import NewTopic

    c = config
    admin = _admin(c)
    try:
        async with asyncio.timeout(c.start_timeout_s):
            await admin.start()
        for topic in (c.topic, c.dlq_topic):
            try:
                await admin.create_topics([NewTopic(topic, c.partitions, c.replication)])
                log.info("created topic", extra={"topic": topic, "partitions": c.partitions})
            except TopicAlreadyExistsError:
                pass
    except (KafkaError, TimeoutError, OSError) as exc:
        log.warning("could not create topics", extra={"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await admin.close()


async def read_message_limits(config: KafkaConfig) -> dict[str, int]:
    """Each topic's max.message.bytes; empty without the DescribeConfigs
    permission (or an answer), in which case the configured record batch
    size stands."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    c = config
    limits: dict[str, int] = {}
    admin = _admin(c)
    try:
        async with asyncio.timeout(c.start_timeout_s):
            await admin.start()
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, t, configs={"max.message.bytes": None})
            for t in (c.topic, c.dlq_topic)
        ]
        async with asyncio.timeout(c.start_timeout_s):
            responses = await admin.describe_configs(resources)
        for response in responses:
            for error, _, _, topic, entries in response.resources:
                for entry in entries if not error else ():
                    if entry[0] == "max.message.bytes":
                        limits[topic] = int(entry[1])
    except (KafkaError, TimeoutError, OSError, ValueError) as exc:
        log.warning(
            "could not read the topics' max.message.bytes; record batches stay at --max-batch-bytes",
            extra={"error": f"{type(exc).__name__}: {exc}", "max_batch_bytes": c.max_batch_bytes},
        )
    finally:
        await admin.close()
    return limits
