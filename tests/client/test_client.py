"""The client library against a real gRPC server speaking the OrderIngest contract.

`IngestPeer` is a small grpc.aio server (a test peer, not a stand-in for the
service): it acks every batch in arrival order and records every payload it
receives, and it can be told to break streams, end them early, stall, answer
with a wrong batch_id, delay its acks, or be stopped and restarted on its port.
test_load.py uses it too.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2
from keystone_ingest.client.client import (
    SERVICE,
    AckMismatchError,
    AsyncIngestClient,
    BatchTooLarge,
    ClientClosedError,
    IngestClient,
    IngestRpcError,
    RetryPolicy,
    new_batch_id,
    retry_delay_from_trailers,
    with_batch_id,
)
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core
from keystone_ingest.proto.v1 import ingest_pb2
from waiting import wait_until_async

FAST_RETRY = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, deadline_s=5.0)
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


# -- the test peer -------------------------------------------------------------------


@dataclass
class Fault:
    """What the peer does when its `after`-th next batch arrives (1 = the next one)."""

    after: int
    code: grpc.StatusCode | None = grpc.StatusCode.UNAVAILABLE  # None: end the stream with OK (draining)
    details: str = "peer going away"
    trailers: tuple[tuple[str, bytes], ...] = ()
    sticky: bool = False  # keep failing every later batch too (a permanent refusal)


class IngestPeer:
    """A real OrderIngest server for the client tests (see the module docstring)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []  # every batch payload, both methods, arrival order
        self.streams: list[list[bytes]] = []  # the payloads of each StreamOrders call
        self.unary_received: list[bytes] = []
        self.stream_metadata: list[dict[str, str]] = []  # invocation metadata of each stream
        self.acks: list[ingest_pb2.BatchAck] = []
        self.ack_delay_s = 0.0
        self.wrong_batch_id = False
        self.stall = False  # take batches, never ack them
        self.stalled = 0  # batches taken while stalling (never acked)
        self.max_outstanding = 0
        self.fault: Fault | None = None
        self.port = 0
        self.first_acks: dict[str, ingest_pb2.BatchAck] = {}  # the first ack of each batch_id
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int = 0) -> int:
        server = grpc.aio.server()
        # No request deserialiser: the peer sees the exact bytes the client sent.
        ack_bytes = ingest_pb2.BatchAck.SerializeToString
        handlers = {
            "StreamOrders": grpc.stream_stream_rpc_method_handler(self._stream_orders, response_serializer=ack_bytes),
            "IngestOrders": grpc.unary_unary_rpc_method_handler(self._ingest_orders, response_serializer=ack_bytes),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self._server = server
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ack(self, raw: bytes) -> ingest_pb2.BatchAck:
        batch = ingest_pb2.OrderBatch.FromString(raw)
        first = self.first_acks.get(batch.batch_id)
        if first is not None:
            ack = ingest_pb2.BatchAck()
            ack.CopyFrom(first)
            ack.status = ingest_pb2.ACK_STATUS_DUPLICATE_BATCH
        else:
            ack = ingest_pb2.BatchAck(
                batch_id=batch.batch_id, status=ingest_pb2.ACK_STATUS_ACCEPTED, accepted=len(batch.orders)
            )
            self.first_acks[batch.batch_id] = ack
        if self.wrong_batch_id:
            ack = ingest_pb2.BatchAck(batch_id="not-" + batch.batch_id, status=ack.status, accepted=ack.accepted)
        self.acks.append(ack)
        return ack

    def _take_fault(self) -> Fault | None:
        fault = self.fault
        if fault is None:
            return None
        fault.after -= 1
        if fault.after > 0:
            return None
        if not fault.sticky:
            self.fault = None
        return fault

    async def _stream_orders(self, requests, context: grpc.aio.ServicerContext):
        self.stream_metadata.append({key: value for key, value in context.invocation_metadata()})
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        outstanding = 0
        self.streams.append(this_stream := [])

        async def read() -> None:
            # Reads ahead of the acks, so batches in flight can be counted.
            nonlocal outstanding
            async for raw in requests:
                self.received.append(raw)
                this_stream.append(raw)
                outstanding += 1
                self.max_outstanding = max(self.max_outstanding, outstanding)
                await queue.put(raw)
            await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            while (raw := await queue.get()) is not None:
                fault = self._take_fault()
                if fault is not None:
                    if fault.code is None:
                        return
                    await context.abort(fault.code, fault.details, trailing_metadata=fault.trailers)
                if self.stall:
                    self.stalled += 1
                    await asyncio.Event().wait()
                if self.ack_delay_s:
                    await asyncio.sleep(self.ack_delay_s)  # a slow server is the scenario, not a sync
                outstanding -= 1
                yield self._ack(raw)
        finally:
            reader.cancel()

    async def _ingest_orders(self, raw: bytes, context: grpc.aio.ServicerContext) -> ingest_pb2.BatchAck:
        self.received.append(raw)
        self.unary_received.append(raw)
        fault = self._take_fault()
        if fault is not None:
            await context.abort(fault.code, fault.details, trailing_metadata=fault.trailers)
        return self._ack(raw)


@asynccontextmanager
async def running_peer():
    peer = IngestPeer()
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop(0)


def run(test: Callable[[], Awaitable[None]], timeout_s: float = 15.0) -> None:
    """Runs an async test body on a fresh event loop, bounded in time."""
    asyncio.run(asyncio.wait_for(test(), timeout_s))


def batches(n: int, orders_per_batch: int = 3, seed: int = 1) -> list[ingest_pb2.OrderBatch]:
    generator = OrderGenerator(seed=seed)
    return [generator.batch(orders_per_batch, batch_id=f"b{k}") for k in range(n)]


def retry_info_trailers(delay_s: float) -> tuple[tuple[str, bytes], ...]:
    """`grpc-status-details-bin` holding a google.rpc.Status with a RetryInfo, encoded by hand."""

    def field(number: int, payload: bytes) -> bytes:
        assert len(payload) < 128
        return bytes([number << 3 | 2, len(payload)]) + payload

    delay = duration_pb2.Duration(seconds=int(delay_s), nanos=round(delay_s % 1 * 1e9))
    detail = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=field(1, delay.SerializeToString()))
    code = bytes([1 << 3, grpc.StatusCode.UNAVAILABLE.value[0]])
    status = code + field(2, b"busy") + field(3, detail.SerializeToString())
    return (("grpc-status-details-bin", status),)


# -- the stream ------------------------------------------------------------------------


def test_acks_come_back_in_send_order_and_peer_gets_the_exact_bytes():
    async def body():
        sent = batches(20)
        async with running_peer() as peer, AsyncIngestClient(peer.target, max_in_flight=5) as client:
            futures = [await client.send(batch) for batch in sent]
            acks = await asyncio.gather(*futures)
        assert [ack.batch_id for ack in acks] == [f"b{k}" for k in range(20)]
        assert all(ack.status == ingest_pb2.ACK_STATUS_ACCEPTED and ack.accepted == 3 for ack in acks)
        assert peer.received == [batch.SerializeToString() for batch in sent]
        assert client.stats.batches_acked == 20 and client.stats.resends == 0 and client.stats.reconnects == 0

    run(body)


def test_batch_without_id_gets_a_fresh_sortable_id_and_the_client_source():
    async def body():
        first, second = ingest_pb2.OrderBatch(), ingest_pb2.OrderBatch(source="mine")
        async with running_peer() as peer, AsyncIngestClient(peer.target, source="shop") as client:
            ack_first = await client.ingest(first)
            time.sleep(0.002)  # ULIDs order by millisecond: time passing is the subject, not a sync
            ack_second = await client.ingest(second)
        assert ULID.fullmatch(first.batch_id) and ULID.fullmatch(second.batch_id)
        assert first.batch_id < second.batch_id
        assert (ack_first.batch_id, ack_second.batch_id) == (first.batch_id, second.batch_id)
        assert [ingest_pb2.OrderBatch.FromString(raw).source for raw in peer.received] == ["shop", "mine"]

    run(body)


def test_explicit_batch_id_conflicting_with_the_message_is_refused():
    async def body():
        client = AsyncIngestClient("127.0.0.1:1")
        with pytest.raises(ValueError, match="carries batch_id 'a'"):
            await client.send(ingest_pb2.OrderBatch(batch_id="a"), batch_id="b")
        with pytest.raises(TypeError, match="needs its batch_id"):
            await client.send(b"\x12\x01x")
        await client.close()

    run(body)


def test_broken_stream_resends_every_unacked_batch_with_same_id_and_bytes():
    async def body():
        sent = batches(10)
        payloads = {batch.batch_id: batch.SerializeToString() for batch in sent}
        async with running_peer() as peer:
            peer.fault = Fault(after=4)  # the 4th batch breaks the stream, unacked
            async with AsyncIngestClient(peer.target, max_in_flight=10, retry=FAST_RETRY) as client:
                futures = [await client.send(batch) for batch in sent]
                acks = await asyncio.gather(*futures)
        assert [ack.batch_id for ack in acks] == list(payloads)
        first, second = ([ingest_pb2.OrderBatch.FromString(raw).batch_id for raw in stream] for stream in peer.streams)
        # The first stream got b0..b3 (and maybe more before it went away); the
        # second gets everything from the first batch whose ack the client had
        # not seen, in order: b3 at the latest.
        assert first[:4] == ["b0", "b1", "b2", "b3"]
        assert second == [f"b{k}" for k in range(int(second[0][1:]), 10)] and int(second[0][1:]) <= 3
        assert all(raw == payloads[bid] for bid, raw in zip(first + second, peer.received, strict=True))
        # A batch acked on the first stream whose ack was lost with it comes back as a duplicate.
        for ack in acks:
            acked_twice = ack.batch_id in first[:3] and ack.batch_id in second
            expected = ingest_pb2.ACK_STATUS_DUPLICATE_BATCH if acked_twice else ingest_pb2.ACK_STATUS_ACCEPTED
            assert (ack.batch_id, ack.status, ack.accepted) == (ack.batch_id, expected, 3)
        # Batches written after b3 may have died with the stream before the peer read them.
        assert client.stats.reconnects == 1 and 1 <= client.stats.resends == client.stats.writes - 10 <= 7
        assert len(peer.stream_metadata) == 2


def test_server_restart_on_the_same_port_is_ridden_out():
    async def body():
        sent = batches(30)
        peer = IngestPeer()
        port = await peer.start()
        peer.ack_delay_s = 0.01
        client = AsyncIngestClient(peer.target, max_in_flight=4, retry=FAST_RETRY)
        futures = [await client.send(batch) for batch in sent[:10]]
        await futures[2]
        await peer.stop(0)  # in-flight batches are lost with the process
        restarted = IngestPeer()
        restarted.received = peer.received  # one log across both lives
        restarted.first_acks = peer.first_acks  # the service's batch_id window survives a restart

        async def restart_later() -> None:
            await asyncio.sleep(0.3)  # the server is down this long: the scenario, not a sync
            await restarted.start(port)

        restart = asyncio.create_task(restart_later())
        futures += [await client.send(batch) for batch in sent[10:]]
        acks = await asyncio.gather(*futures)
        await client.close()
        await restart
        await restarted.stop(0)
        assert [ack.batch_id for ack in acks] == [batch.batch_id for batch in sent]
        received_ids = [ingest_pb2.OrderBatch.FromString(raw).batch_id for raw in restarted.received]
        assert set(received_ids) == {batch.batch_id for batch in sent}
        for ack in acks:
            if received_ids.count(ack.batch_id) == 1:
                assert ack.status == ingest_pb2.ACK_STATUS_ACCEPTED
            else:  # resent: the peer never answered the first copy, or its ack died with the peer
                assert ack.status in (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE_BATCH)
        assert client.stats.reconnects >= 1 and client.stats.resends >= 1

    run(body)


def test_in_flight_batches_never_exceed_max_in_flight():
    async def body():
        async with running_peer() as peer:
            peer.ack_delay_s = 0.02
            async with AsyncIngestClient(peer.target, max_in_flight=3) as client:
                futures = [await client.send(batch) for batch in batches(15)]
                await client.flush()
        assert all(future.done() and future.result().accepted == 3 for future in futures)
        assert peer.max_outstanding == 3

    run(body)


def test_permanent_status_fails_unacked_batches_with_its_code_and_details():
    async def body():
        async with running_peer() as peer:
            peer.fault = Fault(
                after=1, code=grpc.StatusCode.PERMISSION_DENIED, details="caller may not ingest", sticky=True
            )
            async with AsyncIngestClient(peer.target, max_in_flight=4, retry=FAST_RETRY) as client:
                futures = [await client.send(batch) for batch in batches(4)]
                await client.flush()
                errors = [future.exception() for future in futures]
                # The client stays usable: the next batch goes on a new stream.
                peer.fault = None
                ack = await client.ingest(OrderGenerator(seed=2).batch(3, batch_id=""), batch_id="after")
        assert all(isinstance(error, IngestRpcError) for error in errors)
        assert {(e.code, e.details, e.retriable, e.gave_up) for e in errors} == {
            (grpc.StatusCode.PERMISSION_DENIED, "caller may not ingest", False, False)
        }
        assert ack.batch_id == "after" and client.stats.batches_failed == 4

    run(body)


def test_retriable_failures_past_the_deadline_fail_the_batches():
    async def body():
        peer = IngestPeer()
        port = await peer.start()
        await peer.stop(0)  # nothing listens on the port any more
        policy = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=0.1, deadline_s=0.5)
        started = time.monotonic()
        async with AsyncIngestClient(f"127.0.0.1:{port}", retry=policy) as client:
            future = await client.send(batches(1)[0])
            await client.flush()
        error = future.exception()
        assert isinstance(error, IngestRpcError) and error.gave_up and error.retriable
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started >= 0.5  # the deadline, not sooner

    run(body)


def test_retry_info_delay_from_the_server_replaces_the_backoff():
    async def body():
        async with running_peer() as peer:
            peer.fault = Fault(after=1, trailers=retry_info_trailers(0.4))
            async with AsyncIngestClient(peer.target, retry=FAST_RETRY) as client:
                started = time.monotonic()
                ack = await client.ingest(batches(1)[0])
                elapsed_s = time.monotonic() - started
        assert ack.status == ingest_pb2.ACK_STATUS_ACCEPTED
        assert elapsed_s >= 0.4  # FAST_RETRY alone would have waited at most 0.05 s

    run(body)


def test_retry_delay_is_read_from_status_details_and_ignored_when_absent_or_garbled():
    assert retry_delay_from_trailers(retry_info_trailers(1.25)) == pytest.approx(1.25)
    assert retry_delay_from_trailers((("grpc-status-details-bin", b"\xff\xff"),)) is None
    assert retry_delay_from_trailers((("other", "x"),)) is None
    assert retry_delay_from_trailers(None) is None


def test_stream_ended_by_a_draining_server_resends_what_it_did_not_ack():
    async def body():
        sent = batches(6)
        async with running_peer() as peer:
            peer.fault = Fault(after=3, code=None)  # returns OK without acking the 3rd
            async with AsyncIngestClient(peer.target, retry=FAST_RETRY) as client:
                acks = await asyncio.gather(*[await client.send(batch) for batch in sent])
        assert [ack.batch_id for ack in acks] == [batch.batch_id for batch in sent]
        assert client.stats.reconnects == 1
        assert ingest_pb2.OrderBatch.FromString(peer.received[-4]).batch_id == "b2"

    run(body)


def test_batch_not_acked_within_ack_timeout_is_resent_on_a_new_stream():
    async def body():
        async with running_peer() as peer:
            peer.stall = True
            async with AsyncIngestClient(peer.target, ack_timeout_s=0.3, retry=FAST_RETRY) as client:
                future = await client.send(batches(1)[0])
                await wait_until_async(lambda: peer.stalled == 1, 10, what="the first attempt taken and never acked")
                peer.stall = False
                ack = await future
        assert ack.batch_id == "b0" and ack.status == ingest_pb2.ACK_STATUS_ACCEPTED
        assert client.stats.resends == 1 and len(peer.received) == 2 and peer.received[0] == peer.received[1]

    run(body)


def test_ack_naming_another_batch_fails_loudly():
    async def body():
        async with running_peer() as peer:
            peer.wrong_batch_id = True
            async with AsyncIngestClient(peer.target) as client:
                future = await client.send(batches(1)[0])
                await client.flush()
        with pytest.raises(AckMismatchError, match="expected the ack of batch 'b0', server acked 'not-b0'"):
            future.result()

    run(body)


def test_call_metadata_is_fetched_again_for_every_stream():
    async def body():
        tokens = iter(["t1", "t2"])
        async with running_peer() as peer:
            peer.fault = Fault(after=1)
            metadata = lambda: [("authorization", f"Bearer {next(tokens)}")]  # noqa: E731
            async with AsyncIngestClient(peer.target, metadata=metadata, retry=FAST_RETRY) as client:
                await client.ingest(batches(1)[0])
        assert [md["authorization"] for md in peer.stream_metadata] == ["Bearer t1", "Bearer t2"]

    run(body)


def test_leaving_on_an_exception_fails_pending_batches_without_waiting():
    async def body():
        async with running_peer() as peer:
            peer.stall = True
            with pytest.raises(RuntimeError):
                async with AsyncIngestClient(peer.target) as client:
                    future = await client.send(batches(1)[0])
                    raise RuntimeError("caller failed")
            with pytest.raises(ClientClosedError):
                future.result()
            with pytest.raises(ClientClosedError):
                await client.send(batches(1)[0])

    run(body)


# -- payloads --------------------------------------------------------------------------


def test_serialised_batches_are_sent_byte_for_byte_and_with_batch_id_sets_the_id():
    async def body():
        raw = OrderGenerator(seed=3).batch(2, batch_id="").SerializeToString()
        payload = with_batch_id(raw, "x" * 200)  # a two-byte length varint
        assert ingest_pb2.OrderBatch.FromString(payload).batch_id == "x" * 200
        assert ingest_pb2.OrderBatch.FromString(with_batch_id(payload, "short")).batch_id == "short"
        async with running_peer() as peer, AsyncIngestClient(peer.target) as client:
            ack = await client.ingest(with_batch_id(raw, "spliced"), batch_id="spliced")
        assert ack.batch_id == "spliced" and ack.accepted == 2
        assert peer.received == [with_batch_id(raw, "spliced")]

    run(body)


def test_native_core_reads_a_spliced_batch_id_last_one_wins():
    raw = OrderGenerator(seed=3).batch(2, batch_id="original").SerializeToString()
    result = Core().process(with_batch_id(raw, "spliced"))
    assert result.batch_id == "spliced" and result.accepted == 2


def test_batch_over_max_batch_bytes_is_refused_before_sending():
    async def body():
        client = AsyncIngestClient("127.0.0.1:1", max_batch_bytes=1000)
        with pytest.raises(BatchTooLarge, match="more than 1000"):
            await client.send(OrderGenerator(seed=1).batch(10))
        await client.close()

    run(body)


def test_new_batch_ids_are_unique_ulids():
    ids = [new_batch_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(ULID.fullmatch(i) for i in ids)


# -- unary and sync ------------------------------------------------------------------------


def test_unary_call_acks_and_retries_a_retriable_status():
    async def body():
        async with running_peer() as peer:
            peer.fault = Fault(after=1)
            async with AsyncIngestClient(peer.target, retry=FAST_RETRY) as client:
                ack = await client.ingest_unary(batches(1)[0])
                peer.fault = Fault(after=1, code=grpc.StatusCode.INVALID_ARGUMENT, details="bad")
                with pytest.raises(IngestRpcError) as failed:
                    await client.ingest_unary(OrderGenerator(seed=2).batch(3, batch_id=""), batch_id="u2")
        assert ack.batch_id == "b0" and ack.accepted == 3
        assert len(peer.unary_received) == 3 and peer.unary_received[0] == peer.unary_received[1]
        assert (failed.value.code, failed.value.details) == (grpc.StatusCode.INVALID_ARGUMENT, "bad")

    run(body)


def test_sync_client_sends_ingests_and_flushes_from_a_thread():
    async def body():
        sent = batches(8)
        async with running_peer() as peer:

            def use_sync_client() -> list:
                with IngestClient(peer.target, max_in_flight=2, retry=FAST_RETRY) as client:
                    futures = [client.send(batch) for batch in sent[:5]]
                    client.flush()
                    assert all(future.done() for future in futures)
                    acks = [future.result() for future in futures]
                    acks.append(client.ingest(sent[5]))
                    acks.append(client.ingest_unary(sent[6]))
                    acks.append(client.send(sent[7].SerializeToString(), batch_id="b7").result(5))
                    return acks

            acks = await asyncio.to_thread(use_sync_client)
        assert [ack.batch_id for ack in acks] == [batch.batch_id for batch in sent]
        assert peer.received == [batch.SerializeToString() for batch in sent]

    run(body)
