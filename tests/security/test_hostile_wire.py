"""Hostile input over the wire against a real server: garbage bytes, truncated
and oversized messages, a batch with every field at its limit, a stream that
never reads its acks, thousands of streams opened and dropped, a client that
disconnects mid-batch. After each: the server is up, its memory bounded, the
bad request got a clear status, and a valid batch is ingested correctly. The
tests that read the server's resident memory run it as a process; the others
run it in this process."""

from __future__ import annotations

import os
import socket

import grpc
import pytest
from h2raw import GOAWAY, RST_STREAM, RawH2, frame, grpc_message
from kafkautil import read_all
from keystone_ingest.client.client import IngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core, InvalidBatch
from keystone_ingest.proto.v1 import ingest_pb2
from secutil import STREAM_METHOD, UNARY_METHOD
from waiting import wait_until

MiB = 1 << 20


def unary(channel: grpc.Channel):
    return channel.unary_unary(
        UNARY_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
    )


def rejection(raw: bytes, **core_options) -> str:
    """The reason the native core gives for `raw`, as the server puts it in its ack."""
    with pytest.raises(InvalidBatch) as invalid:
        Core(**core_options).process(raw)
    return f"{invalid.value.code}: {invalid.value.message}"


def assert_valid_batch_is_ingested(d, batch_id: str, seed: int, n: int = 200) -> None:
    batch = OrderGenerator(seed=seed).batch(n, batch_id=batch_id)
    with IngestClient(d.target) as client:
        ack = client.ingest(batch)
    assert (ack.batch_id, ack.status, ack.accepted, ack.rejected) == (batch_id, ingest_pb2.ACK_STATUS_ACCEPTED, n, 0)
    mine = [r for r in read_all(d.cluster.bootstrap, d.topic) if r.header("batch_id") == batch_id.encode()]
    assert sorted(r.value for r in mine) == sorted(o.SerializeToString() for o in batch.orders)


def test_garbage_truncated_and_oversized_messages_get_clear_answers(in_process):
    d = in_process("--max-message-bytes", str(MiB))
    good = OrderGenerator(seed=1).batch(100, batch_id="hostile-good").SerializeToString()
    garbage = os.urandom(4096)
    truncated = good[: len(good) // 2]
    with grpc.insecure_channel(d.target) as channel:
        for raw in (garbage, truncated, b"\xff" * 64, good[:3]):
            ack = unary(channel)(raw, timeout=30)
            assert ack.status == ingest_pb2.ACK_STATUS_REJECTED
            assert [(e.index, e.reason) for e in ack.errors] == [(0, rejection(raw))]
        # The same on a stream, which stays open after each rejection.
        acks = list(
            channel.stream_stream(
                STREAM_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
            )(iter([garbage, truncated, good]), timeout=30)
        )
        assert [a.status for a in acks] == [
            ingest_pb2.ACK_STATUS_REJECTED,
            ingest_pb2.ACK_STATUS_REJECTED,
            ingest_pb2.ACK_STATUS_ACCEPTED,
        ]
        assert [e.reason for e in acks[1].errors] == [rejection(truncated)]
        oversized = os.urandom(MiB + 1)
        with pytest.raises(grpc.RpcError) as refused:
            unary(channel)(oversized, timeout=30)
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"SERVER: Received message larger than max ({MiB + 1} vs. {MiB})",
        )

    # Not HTTP/2 at all, and HTTP/2 frames of nonsense: the connection is dropped.
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw_socket:
        raw_socket.sendall(os.urandom(65536))
        raw_socket.settimeout(10)
        try:
            while raw_socket.recv(65536):
                pass
        except ConnectionResetError:
            pass
    with RawH2(d.port) as h2:
        h2.send(bytes([0, 0, 8, 0xFE, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF]) + os.urandom(8))  # unknown frame type: ignored
        h2.send(bytes([0, 0, 4, 8, 0, 0, 0, 0, 0]) + b"\x00\x00\x00\x00")  # WINDOW_UPDATE of 0: connection error
        assert h2.closed.wait(30)  # the server dropped the connection (gRPC sends no GOAWAY for this)
    # Answered: four unary calls and two stream batches rejected, the stream's good batch accepted;
    # the oversized message was refused before any handler saw it.
    assert d.metric("keystone_ingest_batches_total", status="rejected") == 6
    assert d.metric("keystone_ingest_batches_total", status="accepted") == 1
    assert_valid_batch_is_ingested(d, "after-garbage", seed=2)


def test_a_batch_with_every_field_at_its_limit_is_accepted_and_one_past_is_rejected(in_process):
    d = in_process("--max-orders-per-batch", "500")
    gen = OrderGenerator(seed=3)
    batch = gen.batch(500, batch_id="b" * 128, source="s" * 128)
    for i, order in enumerate(batch.orders):
        order.event_id = f"{i:06d}".ljust(128, "e")
        order.order_id = f"{i:06d}".ljust(64, "o")
        order.customer_id = f"{i:06d}".ljust(64, "c")
        order.customer.customer_unique_id = f"{i:06d}".ljust(64, "u")
        order.customer.customer_zip_code_prefix = "9" * 256
        order.customer.customer_city = "ç" * 128  # 256 bytes of UTF-8
        order.customer.customer_state = "S" * 256
        for item in order.items:
            item.product_id = "p" * 64
            item.seller_id = "v" * 64
    raw = batch.SerializeToString()
    assert Core(max_orders_per_batch=500).process(raw).accepted == 500  # the reference agrees it is valid
    with grpc.insecure_channel(d.target) as channel:
        ack = unary(channel)(raw, timeout=60)
        assert (ack.status, ack.accepted, ack.rejected) == (ingest_pb2.ACK_STATUS_ACCEPTED, 500, 0)

        over = ingest_pb2.OrderBatch()
        over.CopyFrom(batch)
        over.batch_id = "c" * 128
        over.orders.append(gen.order())
        ack = unary(channel)(over.SerializeToString(), timeout=60)
        assert ack.status == ingest_pb2.ACK_STATUS_REJECTED
        assert [e.reason for e in ack.errors] == [rejection(over.SerializeToString(), max_orders_per_batch=500)]

        long_id = ingest_pb2.OrderBatch()
        long_id.CopyFrom(batch)
        long_id.batch_id = "d" * 129
        ack = unary(channel)(long_id.SerializeToString(), timeout=60)
        assert ack.status == ingest_pb2.ACK_STATUS_REJECTED
        assert [e.reason for e in ack.errors] == [rejection(long_id.SerializeToString())]

        one_long = ingest_pb2.OrderBatch()
        one_long.CopyFrom(batch)
        one_long.batch_id = "e" * 128
        for i, order in enumerate(one_long.orders):
            order.event_id = f"x{i:06d}".ljust(128, "e")
        one_long.orders[7].customer.customer_city = "c" * 257
        ack = unary(channel)(one_long.SerializeToString(), timeout=60)
        assert (ack.status, ack.accepted, ack.rejected) == (ingest_pb2.ACK_STATUS_ACCEPTED, 499, 1)
        assert [(e.index, e.reason) for e in ack.errors] == [(7, "text_too_long")]
    records = [r for r in read_all(d.cluster.bootstrap, d.topic) if r.header("batch_id") == b"b" * 128]
    assert sorted(r.value for r in records) == sorted(o.SerializeToString() for o in batch.orders)
    assert {r.header("source") for r in records} == {b"s" * 128}


def test_a_stream_that_never_reads_its_acks_holds_no_more_than_its_budget(deploy):
    d = deploy("--max-in-flight-per-stream", "4", "--max-stream-bytes-in-flight", str(MiB))
    assert_valid_batch_is_ingested(d, "warm-up", seed=4)
    baseline = d.rss_bytes()
    gen = OrderGenerator(seed=5)
    with RawH2(d.port, initial_window=0) as stuck:  # the server may never send it a byte of DATA
        stuck.open(1, STREAM_METHOD)
        sent = 0
        for i in range(12):
            raw = gen.batch(10, batch_id=f"stuck-{i}").SerializeToString()
            stuck.data(1, grpc_message(raw))
            sent += len(raw) + 5
        assert sent < 65_535  # within the server's initial receive window
        wait_until(lambda: d.metric("keystone_ingest_streams_open") == 1, 60, what="the stuck stream is open")
        # Others are served meanwhile.
        assert_valid_batch_is_ingested(d, "beside-the-stuck-stream", seed=6)
        assert d.metric("keystone_ingest_streams_open") == 1
    wait_until(
        lambda: d.metric("keystone_ingest_streams_open") == 0, 60, what="the stuck stream is gone after its client left"
    )
    wait_until(lambda: d.metric("keystone_ingest_batches_in_flight") == 0, 60, what="no batch left in flight")
    assert d.rss_bytes() - baseline < 64 * MiB
    assert_valid_batch_is_ingested(d, "after-the-stuck-stream", seed=7)


def test_a_client_that_disconnects_mid_batch_leaves_nothing_behind(in_process):
    d = in_process()
    batch = OrderGenerator(seed=8).batch(300, batch_id="cut-short")
    raw = batch.SerializeToString()
    for cut in (0, 5, len(raw) // 2, len(raw) - 1):
        with RawH2(d.port) as h2:
            h2.open(1, UNARY_METHOD)
            h2.data(1, grpc_message(raw[:cut], declared_length=len(raw)))
    with RawH2(d.port) as h2:  # the headers and nothing else
        h2.open(1, STREAM_METHOD)
    wait_until(lambda: d.metric("keystone_ingest_streams_open") == 0, 60, what="no stream left open")
    assert d.metric("keystone_ingest_batches_in_flight") == 0
    assert d.metric("keystone_ingest_bytes_in_flight") == 0
    assert d.metric("keystone_ingest_batch_seconds_count") == 0  # no part of a batch was taken for one
    # The whole batch sent afterwards is new to the server: nothing of the cut attempts was taken.
    with IngestClient(d.target) as client:
        ack = client.ingest(batch)
    assert (ack.status, ack.accepted) == (ingest_pb2.ACK_STATUS_ACCEPTED, 300)
    records = [r for r in read_all(d.cluster.bootstrap, d.topic) if r.header("batch_id") == b"cut-short"]
    assert sorted(r.value for r in records) == sorted(o.SerializeToString() for o in batch.orders)


def test_thousands_of_streams_opened_and_dropped_leave_the_server_as_it_was(deploy):
    d = deploy("--max-streams-per-caller", "10000")
    assert_valid_batch_is_ingested(d, "before-the-storm", seed=9)
    baseline = d.rss_bytes()
    payload = OrderGenerator(seed=10).batch(20, batch_id="storm").SerializeToString()

    opened = 0
    for _ in range(40):
        with RawH2(d.port) as h2:
            for i in range(50):
                stream = 2 * i + 1
                h2.open(stream, STREAM_METHOD)
                if i % 2:  # half send a batch (copies of one batch_id), half nothing
                    h2.data(stream, grpc_message(payload))
                if i % 3 == 0:  # a third are cancelled; the rest go with the connection
                    h2.send(frame(RST_STREAM, 0, stream, (8).to_bytes(4, "big")))  # CANCEL
                opened += 1
    assert opened == 2000
    wait_until(lambda: d.metric("keystone_ingest_streams_open") == 0, 120, what="every dropped stream is closed")
    wait_until(lambda: d.metric("keystone_ingest_batches_in_flight") == 0, 60, what="no batch left in flight")
    assert d.rss_bytes() - baseline < 128 * MiB
    assert d.server.process.poll() is None
    assert_valid_batch_is_ingested(d, "after-the-storm", seed=11)


def test_keepalive_pings_faster_than_allowed_get_the_connection_closed(in_process):
    d = in_process("--min-client-ping-interval-s", "300")
    with RawH2(d.port) as h2:
        h2.open(1, STREAM_METHOD)  # an open call, so the server does not just idle-close
        for i in range(4):
            h2.send(bytes([0, 0, 8, 6, 0, 0, 0, 0, 0]) + i.to_bytes(8, "big"))  # PING
        assert h2.closed.wait(60)
        goaway = [payload for kind, _, _, payload in h2.frames if kind == GOAWAY]
        assert goaway and goaway[-1][8:] == b"too_many_pings"
    assert_valid_batch_is_ingested(d, "after-the-pings", seed=12)
