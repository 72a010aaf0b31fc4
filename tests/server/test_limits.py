"""Limits a real server enforces: message size (a server in this process), and
bytes in flight and resident memory under overload (server processes, whose
RSS the tests read)."""

from __future__ import annotations

import threading

import grpc
import pytest
from kafkautil import read_all
from keystone_ingest.client.client import IngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.proto.v1 import ingest_pb2

UNARY_METHOD = "/keystone.ingest.v1.OrderIngest/IngestOrders"


def test_a_batch_over_max_message_bytes_gets_resource_exhausted_and_the_server_goes_on(in_process):
    d = in_process("--max-message-bytes", str(256 * 1024))
    big = OrderGenerator(seed=1).batch(1500, batch_id="too-big").SerializeToString()
    assert len(big) > 256 * 1024
    with grpc.insecure_channel(d.target) as channel:
        call = channel.unary_unary(
            UNARY_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
        )
        with pytest.raises(grpc.RpcError) as refused:
            call(big, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == f"SERVER: Received message larger than max ({len(big)} vs. {256 * 1024})"
        ok = call(OrderGenerator(seed=2).batch(100, batch_id="fits").SerializeToString(), timeout=30)
    assert (ok.status, ok.accepted) == (ingest_pb2.ACK_STATUS_ACCEPTED, 100)
    # The refused batch never reached the handler: nothing of it is in Kafka or counted.
    assert [r.header("batch_id") for r in read_all(d.cluster.bootstrap, d.topic)] == [b"fits"] * 100
    assert d.metric("keystone_ingest_batches_total", status="accepted") == 1
    assert d.metric("keystone_ingest_orders_total", outcome="accepted") == 100


def overload(target: str, streams: int = 12) -> tuple[list[int], list[BaseException]]:
    """`streams` clients, each on its own connection with 16 batches of ~320 KB
    in flight, 12 batches each: far more than the budgets of these tests let in."""
    acked: list[int] = []
    failures: list[BaseException] = []

    def stream(seed: int) -> None:
        gen = OrderGenerator(seed=seed)
        batches = [gen.batch(1000) for _ in range(12)]
        try:
            with IngestClient(target, max_in_flight=16) as client:
                futures = [client.send(b) for b in batches]
                acked.extend(f.result(timeout=120).accepted for f in futures)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=stream, args=(100 + i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return acked, failures


def test_overload_becomes_backpressure_with_memory_bounded_by_configuration(deploy):
    # 12 streams, each with up to 16 batches of ~320 KB in flight, against budgets
    # of 2 MiB per stream and 6 MiB for the server: readers must wait.
    d = deploy(
        "--max-bytes-in-flight",
        str(6 << 20),
        "--max-stream-bytes-in-flight",
        str(2 << 20),
        "--max-in-flight-per-stream",
        "16",
    )
    acked, failures = overload(d.target)
    assert not failures
    assert len(acked) == 144 and sum(acked) == 144_000
    assert d.metric("keystone_ingest_backpressure_waits_total") > 0
    assert d.metric("keystone_ingest_bytes_in_flight") == 0
    rss = d.rss_bytes("VmHWM")
    print(f"peak RSS {rss / 2**20:.0f} MiB")
    # What the budgets allow: ~125 MiB idle, 40 MiB of dedup window, 6 MiB of requests (x3:
    # request, Arrow result, Kafka records): ~200 MiB; the rest is gRPC's per-connection
    # transport buffers (12 connections here), which the budgets do not govern, and allocator
    # slack (docs/operations.md, "Memory"). The bound is the product's 512 MiB memory target.
    assert rss < 512 << 20
    assert d.server.stop() == 0


def test_the_memory_limit_keeps_resident_memory_under_it_and_the_server_keeps_serving(deploy):
    # 24 connections with 16 batches of ~320 KB each in flight against a 180
    # MiB limit and the request budget it implies (11 MiB in flight): RSS
    # nears the limit's high mark (144 MiB), admission pauses, every batch is
    # still acked, and RSS stays under the limit. (Under a 200 MiB limit the
    # same load peaks at 155 to 160 MiB, about its high mark: with Kafka as
    # the log and a core that builds no Bronze tables the server holds little
    # per batch, so the limit is set well inside what this load reaches.)
    limit = 180 << 20
    d = deploy("--memory-limit-bytes", str(limit), "--max-in-flight-per-stream", "16")
    acked, failures = overload(d.target, streams=24)
    assert not failures
    assert len(acked) == 288 and sum(acked) == 288_000
    rss = d.rss_bytes("VmHWM")
    print(f"peak RSS {rss / 2**20:.0f} MiB, limit {limit >> 20} MiB")
    assert d.metric("keystone_ingest_memory_limit_waits_total") > 0
    assert rss < limit
    assert d.server.stop() == 0
    paused = [r for r in d.server.log_records() if r.get("msg") == "memory limit: admission paused"]
    high = limit - limit // 5
    assert paused and paused[0]["limit_bytes"] == limit and paused[0]["high_bytes"] == high
    assert paused[0]["rss_bytes"] >= high
