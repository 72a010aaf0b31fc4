"""Per-caller limits on a real server (in this process): a rate of batches
answered with RESOURCE_EXHAUSTED and RetryInfo, and a number of open streams;
and the token bucket itself with a hand-driven clock."""

from __future__ import annotations

import grpc
import pytest
from h2raw import RawH2
from kafkautil import read_all
from keystone_ingest.client.client import retry_delay_from_trailers
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.client.security import bearer_metadata
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.errors import Overloaded
from keystone_ingest.server.security.quotas import CallerQuotas
from secutil import STREAM_METHOD, TOKENS, UNARY_METHOD, tokens_file_text
from waiting import wait_until


def unary(channel: grpc.Channel):
    return channel.unary_unary(
        UNARY_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
    )


def test_a_caller_over_its_rate_gets_resource_exhausted_with_retry_info_and_others_do_not(in_process, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(tokens_file_text())
    # 0.001 batches/s: the third batch of a caller would be taken ~1000 s later.
    d = in_process("--auth-tokens-file", str(tokens), "--caller-rate-batches-s", "0.001", "--caller-burst-batches", "2")
    gen = OrderGenerator(seed=1)
    checkout = bearer_metadata(TOKENS["checkout-api"])
    with grpc.insecure_channel(d.target) as channel:
        for i in range(2):
            assert (
                unary(channel)(
                    gen.batch(5, batch_id=f"rate-{i}").SerializeToString(), metadata=checkout, timeout=30
                ).accepted
                == 5
            )
        with pytest.raises(grpc.RpcError) as limited:
            unary(channel)(gen.batch(5, batch_id="rate-2").SerializeToString(), metadata=checkout, timeout=30)
        assert (limited.value.code(), limited.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "caller checkout-api is over its rate of 0.001 batches/s (burst 2); resend after the delay in RetryInfo",
        )
        delay_s = retry_delay_from_trailers(limited.value.trailing_metadata())
        assert 900 < delay_s <= 1000

        # On a stream: the batches within the rate are acked, then the stream ends with the same status.
        backfill = bearer_metadata(TOKENS["backfill-job"])
        call = channel.stream_stream(
            STREAM_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
        )
        responses = call(
            iter([gen.batch(5, batch_id=f"s-{i}").SerializeToString() for i in range(3)]), metadata=backfill, timeout=30
        )
        acks = []
        with pytest.raises(grpc.RpcError) as limited:
            for ack in responses:
                acks.append(ack)
        assert [(a.batch_id, a.accepted) for a in acks] == [("s-0", 5), ("s-1", 5)]
        assert (limited.value.code(), limited.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "caller backfill-job is over its rate of 0.001 batches/s (burst 2); resend after the delay in RetryInfo",
        )
        assert 900 < retry_delay_from_trailers(limited.value.trailing_metadata()) <= 1000
    # Only the batches within the rate went anywhere.
    in_kafka = sorted(r.header("batch_id") for r in read_all(d.cluster.bootstrap, d.topic))
    assert in_kafka == sorted([b"rate-0", b"rate-1", b"s-0", b"s-1"] * 5)


def test_a_caller_may_hold_only_so_many_streams(in_process):
    # Without authentication the caller is the client's address.
    d = in_process("--max-streams-per-caller", "2")
    held = [RawH2(d.port), RawH2(d.port)]
    try:
        for h2 in held:
            h2.open(1, STREAM_METHOD)
        wait_until(lambda: d.metric("keystone_ingest_streams_open") == 2, 60, what="two streams open")
        with grpc.insecure_channel(d.target) as channel:
            call = channel.stream_stream(
                STREAM_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(call(iter([OrderGenerator(seed=2).batch(3).SerializeToString()]), timeout=30))
            assert (refused.value.code(), refused.value.details()) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "caller ipv4:127.0.0.1 already has 2 streams open, the most allowed (--max-streams-per-caller); "
                "send on those",
            )
            # Unary calls are not streams: still served.
            assert (
                unary(channel)(
                    OrderGenerator(seed=3).batch(3, batch_id="unary-ok").SerializeToString(), timeout=30
                ).accepted
                == 3
            )
    finally:
        for h2 in held:
            h2.close()
    wait_until(lambda: d.metric("keystone_ingest_streams_open") == 0, 60, what="the held streams closed")
    with grpc.insecure_channel(d.target) as channel:
        call = channel.stream_stream(
            STREAM_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
        )
        acks = list(call(iter([OrderGenerator(seed=4).batch(3, batch_id="stream-ok").SerializeToString()]), timeout=30))
    assert [(a.batch_id, a.accepted) for a in acks] == [("stream-ok", 3)]


def test_token_bucket_refills_at_the_rate_up_to_the_burst():
    now = [100.0]
    quotas = CallerQuotas(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        quotas.take_batch("a")
    with pytest.raises(Overloaded) as over:
        quotas.take_batch("a")
    assert over.value.retry_after_s == pytest.approx(0.5)
    quotas.take_batch("b")  # another caller has its own bucket
    now[0] += 0.5
    quotas.take_batch("a")
    with pytest.raises(Overloaded):
        quotas.take_batch("a")
    now[0] += 100  # a long pause refills to the burst, not beyond
    for _ in range(3):
        quotas.take_batch("a")
    with pytest.raises(Overloaded):
        quotas.take_batch("a")
    unlimited = CallerQuotas(rate_per_s=0)
    for _ in range(10_000):
        unlimited.take_batch("a")


def test_stream_counts_are_per_caller_and_given_back():
    quotas = CallerQuotas(max_streams=1)
    quotas.open_stream("a")
    quotas.open_stream("b")
    with pytest.raises(Overloaded):
        quotas.open_stream("a")
    quotas.close_stream("a")
    quotas.open_stream("a")
    quotas.close_stream("a")
    quotas.close_stream("b")
    assert quotas.streams == {}


def test_a_connection_may_open_only_max_streams_per_connection(in_process):
    from h2raw import RST_STREAM, SETTINGS

    d = in_process("--max-streams-per-connection", "5", "--max-streams-per-caller", "100")
    with RawH2(d.port) as h2:
        # The limit applies once the server's SETTINGS (which announce it) are acknowledged.
        wait_until(
            lambda: any(kind == SETTINGS and not flags for kind, flags, _, _ in h2.frames), 60, what="server SETTINGS"
        )
        advertised = next(p for kind, flags, _, p in h2.frames if kind == SETTINGS and not flags)
        settings = {
            int.from_bytes(advertised[i : i + 2], "big"): int.from_bytes(advertised[i + 2 : i + 6], "big")
            for i in range(0, len(advertised), 6)
        }
        assert settings[0x3] == 5  # SETTINGS_MAX_CONCURRENT_STREAMS
        for i in range(6):
            h2.open(2 * i + 1, STREAM_METHOD)
        wait_until(lambda: any(kind == RST_STREAM for kind, *_ in h2.frames), 60, what="the sixth stream refused")
        refused = [(stream, int.from_bytes(p, "big")) for kind, _, stream, p in h2.frames if kind == RST_STREAM]
        assert refused == [(11, 0x7)]  # REFUSED_STREAM
        wait_until(lambda: d.metric("keystone_ingest_streams_open") == 5, 60, what="five streams open")
