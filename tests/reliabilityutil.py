"""Helpers of the crash and S3 outage tests (tests/reliability/test_crash_recovery.py,
test_s3_outage.py): what acked batches must have produced, the one check of
Kafka and Bronze against it, a client stream in a thread, metrics and health
(waiting for a condition: waiting.py).

    expected = expected_from(acked_batches)
    report = check_kafka_and_bronze(bootstrap, topic, dlq, bronze_table, expected, sent=expected_from(all_sent))
"""

from __future__ import annotations

import collections
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import grpc
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafkautil import Record, read_all
from keystone_ingest.client.client import IngestClient, RetryPolicy
from keystone_ingest.core import Core
from keystone_ingest.proto.v1 import ingest_pb2
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

ACKED = (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE_BATCH)


@dataclass
class Expected:
    order_bytes: dict[str, bytes] = field(default_factory=dict)  # event_id -> the client's Order bytes
    items: collections.Counter = field(default_factory=collections.Counter)  # (order_id, item id) -> 1
    rejects: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (batch_id, index) -> bytes


def expected_from(batches: list[ingest_pb2.OrderBatch]) -> Expected:
    """Accepted orders as the distinct event_ids of the valid orders (a later
    copy of an event_id is a duplicate with the same bytes), their items, and
    the rejected orders, each worked out with a core of its own."""
    expected = Expected()
    for batch in batches:
        rejected = {e.index for e in Core().process(batch.SerializeToString()).errors()}
        for i, order in enumerate(batch.orders):
            if i in rejected:
                expected.rejects[(batch.batch_id, i)] = order.SerializeToString()
            elif order.event_id not in expected.order_bytes:
                expected.order_bytes[order.event_id] = order.SerializeToString()
                for item in order.items:
                    expected.items[(order.order_id, item.order_item_id)] += 1
    return expected


def check_copies(records: list[Record], key_of: Callable[[Record], object], *, across_batches: bool = False) -> int:
    """Every copy of a Kafka record has the same key, value, headers and
    partition as the first (the Kafka contract: a resend of a batch that was
    not acked). `across_batches`: a copy may also come in another batch (an
    order sent again to a server that forgot it, after a restart), so its
    batch_id header may differ. Returns how many copies there are."""
    by_key: dict = collections.defaultdict(list)
    for r in records:
        by_key[key_of(r)].append(r)

    def same(r: Record) -> tuple:
        headers = [h for h in r.headers if not (across_batches and h[0] == "batch_id")]
        return r.key, r.value, headers, r.partition

    copies = 0
    for k, group in by_key.items():
        first = same(group[0])
        for r in group[1:]:
            copies += 1
            assert same(r) == first, k
    return copies


def check_kafka_and_bronze(
    bootstrap: str,
    topic: str,
    dlq: str,
    bronze_table: Callable[[str], pa.Table | None],
    expected: Expected,
    sent: Expected,
    *,
    restarts: bool = False,
) -> dict[str, int]:
    """Every acked order (and rejected order) is in Kafka and in Bronze; Bronze
    holds each exactly once and its items exactly once; Kafka holds nothing that
    was not sent, and copies only with identical event_id and bytes (`restarts`:
    servers restarted with empty windows, so a copy may come in another batch)."""
    records = read_all(bootstrap, topic, timeout_s=30)
    in_kafka = {r.header("event_id").decode() for r in records}
    missing = set(expected.order_bytes) - in_kafka
    assert not missing, f"{len(missing)} acked orders not in Kafka"
    assert in_kafka <= set(sent.order_bytes)
    for r in records:
        assert r.value == sent.order_bytes[r.header("event_id").decode()]
    copies = check_copies(records, lambda r: r.header("event_id"), across_batches=restarts)
    dead = read_all(bootstrap, dlq, timeout_s=30)
    in_dlq = {(r.header("batch_id").decode(), int(r.header("error.index"))): r.value for r in dead}
    assert set(expected.rejects) <= set(in_dlq)
    assert all(in_dlq[k] == sent.rejects[k] for k in in_dlq)
    check_copies(dead, lambda r: (r.header("batch_id"), r.header("error.index")))

    orders = bronze_table("orders")
    ids = orders["event_id"].to_pylist() if orders is not None else []
    twice = [e for e, n in collections.Counter(ids).items() if n > 1]
    assert not twice, f"{len(twice)} orders twice in Bronze, e.g. {twice[:3]}"
    missing = set(expected.order_bytes) - set(ids)
    assert not missing, f"{len(missing)} acked orders not in Bronze, e.g. {sorted(missing)[:3]}"
    assert set(ids) <= set(sent.order_bytes)
    items = bronze_table("order_items")
    item_keys = collections.Counter(zip(items["order_id"].to_pylist(), items["order_item_id"].to_pylist(), strict=True))
    assert max(item_keys.values(), default=1) == 1, "an item twice in Bronze"
    assert all(item_keys[k] == 1 for k in expected.items)
    quarantine = bronze_table("_quarantine")
    rejected = (
        list(zip(quarantine["batch_id"].to_pylist(), quarantine["index"].to_pylist(), strict=True))
        if (quarantine is not None)
        else []
    )
    assert len(rejected) == len(set(rejected)), "a rejected order twice in the quarantine"
    assert set(expected.rejects) <= set(rejected)
    return {
        "acked_orders": len(expected.order_bytes),
        "bronze_orders": len(ids),
        "kafka_records": len(records),
        "kafka_copies": copies,
    }


class Stream:
    """Sends `batches` (a list, or any iterable: a generator keeps the load on
    until it ends) in order on one client from a thread, at most `rate`
    batches/s, and records the acks; `sent_batches` are those handed to the
    client. `stop()` closes the client: unacked batches stay unacked (the
    caller resends them on a new stream)."""

    def __init__(
        self, target: str, batches: Iterable[ingest_pb2.OrderBatch], rate: float, retry: RetryPolicy | None = None
    ) -> None:
        self.client = IngestClient(
            target,
            max_in_flight=8,
            ack_timeout_s=30.0,
            retry=retry or RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5),
        )
        self.batches = batches
        self.sent_batches: list[ingest_pb2.OrderBatch] = []
        self.rate = rate
        self.acks: dict[str, ingest_pb2.BatchAck] = {}
        self.failures: dict[str, BaseException] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        for batch in self.batches:
            if self._stop.is_set():
                return
            try:
                future = self.client.send(batch)
            except Exception:
                return  # the client is closing
            self.sent += 1
            self.sent_batches.append(batch)
            future.add_done_callback(partial(self._answered, batch.batch_id))
            next_at = max(next_at + 1 / self.rate, time.monotonic() - 1)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _answered(self, batch_id: str, future) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            self.failures[batch_id] = future.exception()
        else:
            self.acks[batch_id] = future.result()

    def done(self) -> bool:
        return not self._thread.is_alive() and len(self.acks) + len(self.failures) >= self.sent

    def wait(self, timeout_s: float) -> None:
        wait_until(
            self.done, timeout_s, what=lambda: f"every batch answered: {len(self.acks)} acks of {self.sent} sent"
        )

    def stop(self) -> None:
        self._stop.set()
        self.client.close(cancel_pending=True)
        self._thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(port: int, name: str, **labels: str) -> float:
    return metrics(port).get((name, frozenset(labels.items())), 0.0)


def health(target: str) -> str:
    try:
        with grpc.insecure_channel(target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    except grpc.RpcError as error:
        return f"error:{error.code().name}"
