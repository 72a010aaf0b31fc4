"""Kafka failing under a sustained stream, for real: a `keystone-ingest serve`
process on a private dev broker (3 brokers) that the tests take down, move
leaders on and inject Produce errors into, while a client library stream keeps
sending. Afterwards an independent consumer and a Parquet read check that
every acked order is in Kafka and in Bronze, that Bronze holds no order twice,
and that Kafka holds a copy of an order only where the README says it can
("When Kafka can hold an order twice"), with the same event_id and bytes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pyarrow.dataset as ds
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from kafkautil import Record, read_all
from reliabilityutil import expected_from, health, metric, metrics

from keystone_ingest.client.client import IngestClient, IngestRpcError, RetryPolicy
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.devbroker import DevBroker
from keystone_ingest.server.errors import SinkFailed, SinkUnavailable, to_rpc_status
from keystone_ingest.server.launcher import ServerProcess

PARTITIONS = 12  # the dev broker keeps only the newest 5 MiB of a partition
UNARY_METHOD = "/keystone.ingest.v1.OrderIngest/IngestOrders"
SEND_TIMEOUT_S = 3.0
UNAVAILABLE_THRESHOLD_S = 2.0
# Tiny client backoff: a reconnect delay of half a second or more can then only
# come from the server's RetryInfo (the sink asks for 0.5 to 1 s).
CLIENT_RETRY = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, deadline_s=60.0)


# -- the deployment -------------------------------------------------------------------


@dataclass
class Deployment:
    broker: DevBroker
    server: ServerProcess
    topic: str
    dlq: str
    bronze: Path

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return metrics(self.server.metrics_port)

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.server.metrics_port, name, **labels)

    def health(self) -> str:
        return health(self.server.target)


@pytest.fixture
def deploy(tmp_path: Path):
    """A private dev broker and a server on it; everything is closed at teardown."""
    started: list[Deployment] = []

    def start(*extra_args: str) -> Deployment:
        broker = DevBroker(brokers=3, partitions=PARTITIONS)
        topic, dlq = "orders", "orders.dlq"
        broker.create_topic(topic, partitions=PARTITIONS)
        broker.create_topic(dlq, partitions=3)
        # Known leaders: partition p on broker p % 3 + 1.
        for name, count in ((topic, PARTITIONS), (dlq, 3)):
            for p in range(count):
                broker.set_leader(name, p, p % 3 + 1)
        args = ["--kafka-bootstrap", broker.bootstrap, "--topic", topic, "--dlq-topic", dlq,
                "--bronze-uri", f"file://{tmp_path / 'bronze'}", "--linger-ms", "2",
                "--send-timeout-s", str(SEND_TIMEOUT_S),
                "--kafka-unavailable-threshold-s", str(UNAVAILABLE_THRESHOLD_S),
                "--core-threads", "1", *extra_args]  # fmt: skip
        args += ["--wal-dir", str(tmp_path / "wal")]
        try:
            server = ServerProcess(args)
        except BaseException:
            broker.close()
            raise
        d = Deployment(broker, server, topic, dlq, tmp_path / "bronze")
        started.append(d)
        return d

    yield start
    for d in started:
        d.server.close()
        d.broker.close()


# -- the sustained stream -------------------------------------------------------------


class SustainedStream:
    """One client stream sending batches of `orders` orders at `rate` batches/s
    from a thread, until stopped; records every batch, ack and failure."""

    def __init__(self, target: str, seed: int, orders: int = 80, rate: float = 12.0) -> None:
        self.client = IngestClient(target, max_in_flight=8, retry=CLIENT_RETRY, ack_timeout_s=30.0)
        self.generator = OrderGenerator(seed=seed, invalid_ratio=0.02)
        self.orders = orders
        self.rate = rate
        self.batches: dict[str, ingest_pb2.OrderBatch] = {}
        self.acks: dict[str, ingest_pb2.BatchAck] = {}
        self.ack_times: dict[str, float] = {}
        self.failures: dict[str, BaseException] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sustained-stream", daemon=True)

    def __enter__(self) -> SustainedStream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close(cancel_pending=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            batch = self.generator.batch(self.orders)
            self.batches[batch.batch_id] = batch
            future = self.client.send(batch)  # blocks while 8 batches are unacked
            future.add_done_callback(partial(self._answered, batch.batch_id))
            next_at = max(next_at + 1 / self.rate, time.monotonic() - 1)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _answered(self, batch_id: str, future) -> None:
        if future.exception() is not None:
            self.failures[batch_id] = future.exception()
        else:
            self.acks[batch_id] = future.result()
            self.ack_times[batch_id] = time.monotonic()

    def wait_acks(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acks) < count:
            assert time.monotonic() < deadline, f"{len(self.acks)} of {count} acks after {timeout_s} s"
            time.sleep(0.05)

    def finish(self, timeout_s: float = 40.0) -> None:
        """Stop sending and wait until every batch sent is acked or failed."""
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the stream thread is stuck in send()"
        deadline = time.monotonic() + timeout_s
        while len(self.acks) + len(self.failures) < len(self.batches):
            assert time.monotonic() < deadline, "batches neither acked nor failed"
            time.sleep(0.05)


class HealthWatch:
    """Polls the server's health every 0.2 s from a thread; keeps the transitions."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = self.d.health()
            if not self.changes or self.changes[-1][1] != status:
                self.changes.append((time.monotonic(), status))
            self._stop.wait(0.2)

    def status_at(self, t: float) -> str:
        status = "UNKNOWN"
        for at, s in self.changes:
            if at > t:
                break
            status = s
        return status


class ClientLogs(logging.Handler):
    """The client library's "reconnecting" records, with the delay it chose."""

    def __init__(self) -> None:
        super().__init__()
        self.reconnects: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "stream broken; reconnecting":
            self.reconnects.append({k: getattr(record, k, None) for k in ("code", "details", "delay_s")})


@pytest.fixture
def client_logs():
    handler = ClientLogs()
    logger = logging.getLogger("keystone_ingest.client.client")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# -- the verification -----------------------------------------------------------------


def check_copies(records: list[Record], key_of, *, same_attempt_copies_allowed: bool) -> tuple[int, int]:
    """Every copy of a record carries the same key, value and headers. Copies
    from two attempts of the batch (a resend: the server received it twice, so
    the timestamps differ) are what the README allows; copies of one attempt
    (same timestamp) only where the dev broker can append a retried Produce
    request twice (its answer lost in a broker outage). Returns the copies,
    and how many of them are copies of one attempt."""
    by_key: dict = collections.defaultdict(list)
    for r in records:
        by_key[key_of(r)].append(r)
    copies = same_attempt = 0
    for k, group in by_key.items():
        if len(group) == 1:
            continue
        copies += len(group) - 1
        first = group[0]
        for r in group[1:]:
            assert (r.key, r.value, r.headers, r.partition) == (first.key, first.value, first.headers,
                                                                first.partition), k
        stamps = [r.timestamp_ms for r in group]
        same_attempt += len(stamps) - len(set(stamps))
        if not same_attempt_copies_allowed:
            assert len(set(stamps)) == len(stamps), f"{k}: two copies from one attempt {stamps}"
    return copies, same_attempt


def verify(d: Deployment, stream: SustainedStream, *, same_attempt_copies_allowed: bool,
           also_sent: tuple[ingest_pb2.OrderBatch, ...] = ()) -> dict[str, int]:
    """Stops the server with SIGTERM (Bronze files roll), then checks Kafka and
    Bronze. `also_sent`: batches sent outside the stream and not acked."""
    acked = [stream.batches[b] for b, ack in stream.acks.items()
             if ack.status in (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE_BATCH)]
    assert len(acked) == len(stream.acks)
    expected = expected_from(acked)
    sent = expected_from([*stream.batches.values(), *also_sent])
    assert d.server.stop() == 0, d.server.logs()[-3000:]

    records = read_all(d.broker.bootstrap, d.topic, timeout_s=30)
    in_kafka = {r.header("event_id").decode() for r in records}
    assert set(expected.order_bytes) <= in_kafka  # every acked order is in Kafka
    assert in_kafka <= set(sent.order_bytes)  # and nothing that was not sent
    for r in records:
        event_id = r.header("event_id").decode()
        assert r.value == sent.order_bytes[event_id]  # the client's bytes
        assert r.key == ingest_pb2.Order.FromString(r.value).order_id.encode()
    copies, same_attempt = check_copies(records, lambda r: r.header("event_id"),
                                        same_attempt_copies_allowed=same_attempt_copies_allowed)

    dead = read_all(d.broker.bootstrap, d.dlq, timeout_s=30)
    in_dlq = {(r.header("batch_id").decode(), int(r.header("error.index"))): r.value for r in dead}
    assert set(expected.rejects) <= set(in_dlq)
    assert all(in_dlq[k] == sent.rejects[k] for k in in_dlq)
    check_copies(dead, lambda r: (r.header("batch_id"), r.header("error.index")),
                 same_attempt_copies_allowed=same_attempt_copies_allowed)

    orders = ds.dataset(d.bronze / "orders", format="parquet", partitioning="hive").to_table(columns=["event_id"])
    bronze_ids = orders["event_id"].to_pylist()
    assert len(bronze_ids) == len(set(bronze_ids)), "an order twice in Bronze"
    assert set(expected.order_bytes) <= set(bronze_ids) <= set(sent.order_bytes)
    quarantine = ds.dataset(d.bronze / "_quarantine", format="parquet", partitioning="hive").to_table(
        columns=["batch_id", "index"]).to_pylist()
    quarantined = [(r["batch_id"], r["index"]) for r in quarantine]
    assert len(quarantined) == len(set(quarantined))
    assert set(expected.rejects) <= set(quarantined)
    return {"acked_orders": len(expected.order_bytes), "kafka_records": len(records), "kafka_copies": copies,
            "of_one_attempt": same_attempt, "bronze_orders": len(bronze_ids)}


def wait_until(predicate, timeout_s: float, step_s: float = 0.05) -> float:
    """Seconds until predicate() held; fails after timeout_s."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, "condition not reached in time"
        time.sleep(step_s)
    return time.monotonic() - started


def records_acked(d: Deployment) -> float:
    return d.metric("keystone_ingest_kafka_records_total", topic=d.topic)


def retry_delay_of(error: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


# -- the scenarios ----------------------------------------------------------------------


def test_retriable_errors_carry_retry_info_and_permanent_ones_do_not():
    status = to_rpc_status(SinkUnavailable("Kafka did not ack", retry_after_s=0.75))
    assert status.code == grpc.StatusCode.UNAVAILABLE and status.details == "Kafka did not ack"
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    (detail,) = status_pb2.Status.FromString(value).details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info) and info.retry_delay.ToNanoseconds() == 750_000_000
    permanent = to_rpc_status(SinkFailed("too large"))
    assert permanent.code == grpc.StatusCode.INTERNAL
    assert status_pb2.Status.FromString(permanent.trailing_metadata[0][1]).details == []
    assert to_rpc_status(RuntimeError("boom")).code == grpc.StatusCode.INTERNAL


def test_all_brokers_down_for_10_s_mid_stream_nothing_acked_is_lost_and_publishing_resumes(deploy, client_logs):
    d = deploy()
    with HealthWatch(d) as health, SustainedStream(d.server.target, seed=101) as stream:
        stream.wait_acks(20)
        down_at = time.monotonic()
        d.broker.all_down()
        # While down: nothing is acked, and a batch past the send deadline gets
        # UNAVAILABLE with RetryInfo in its status details.
        with grpc.insecure_channel(d.server.target) as channel:
            unary = channel.unary_unary(UNARY_METHOD, request_serializer=None, response_deserializer=None)
            refused = OrderGenerator(seed=102).batch(5)
            with pytest.raises(grpc.RpcError) as failure:
                unary(refused.SerializeToString(), timeout=SEND_TIMEOUT_S + 10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Kafka did not ack" in failure.value.details()
        assert 0.5 <= retry_delay_of(failure.value) <= 1.0
        time.sleep(max(0.0, down_at + 10 - time.monotonic()))
        assert health.status_at(time.monotonic()) == "NOT_SERVING"
        assert d.metric("keystone_ingest_kafka_available") == 0
        assert d.metric("keystone_ingest_kafka_producer_state", state="unavailable") == 1
        before = records_acked(d)
        up_at = time.monotonic()
        d.broker.all_up()
        resume_s = wait_until(lambda: records_acked(d) > before, 10)
        first_ack_s = wait_until(lambda: any(t > up_at for t in stream.ack_times.values()), 10)
        acked_after_up = len(stream.acks)
        wait_until(lambda: health.status_at(time.monotonic()) == "SERVING", 5)
        stream.wait_acks(acked_after_up + 30)
        stream.finish()
    print(f"\nall brokers down 10 s: first Kafka ack {resume_s:.3f} s after all_up, first client ack "
          f"{first_ack_s:.3f} s; health {[(round(t - down_at, 1), s) for t, s in health.changes]}")
    assert resume_s < 2.0
    assert first_ack_s < 3.0
    # No batch was acked while Kafka could not take writes (the acks of the
    # first seconds may still have been on their way).
    late = [t for t in stream.ack_times.values() if down_at + SEND_TIMEOUT_S < t < up_at]
    assert late == []
    # Health: NOT_SERVING during the outage, from the threshold on; SERVING after.
    went_down = [t for t, s in health.changes if s == "NOT_SERVING"]
    assert went_down and down_at + UNAVAILABLE_THRESHOLD_S - 0.5 < went_down[0] < down_at + UNAVAILABLE_THRESHOLD_S + 4
    assert health.changes[-1][1] == "SERVING" and health.changes[-1][0] > up_at
    # The client resent what the outage left unacked, after the delay the server asked for.
    assert stream.failures == {} and stream.client.stats.resends > 0
    kafka_reconnects = [r for r in client_logs.reconnects if "Kafka" in (r["details"] or "")]
    assert kafka_reconnects and all(0.5 <= r["delay_s"] <= 1.1 for r in kafka_reconnects), kafka_reconnects
    # Metrics tell the story.
    m = d.metrics()
    assert m[("keystone_ingest_kafka_unavailable_seconds_total", frozenset())] >= 7
    assert m[("keystone_ingest_kafka_retries_total", frozenset({("kind", "produce")}))] > 0
    assert m[("keystone_ingest_kafka_errors_total", frozenset({("kind", "send_timeout")}))] > 0
    assert m[("keystone_ingest_kafka_publish_seconds_count", frozenset())] > 0
    assert m[("keystone_ingest_kafka_producer_state", frozenset({("state", "connected")}))] == 1
    assert m[("keystone_ingest_kafka_available", frozenset())] == 1
    # A broker dropping connections may lose a Produce answer, and the dev
    # broker appends the retry again: same-attempt copies are allowed here.
    print(verify(d, stream, same_attempt_copies_allowed=True, also_sent=(refused,)))


def test_a_leader_broker_down_and_back_moves_publishing_to_the_new_leaders(deploy):
    d = deploy()
    with HealthWatch(d) as health, SustainedStream(d.server.target, seed=201) as stream:
        stream.wait_acks(20)
        d.broker.broker_down(1)  # leader of partitions 0, 3, 6, 9 and dlq 0
        time.sleep(1.0)  # the controller notices and elects new leaders
        for name, count in ((d.topic, PARTITIONS), (d.dlq, 3)):
            for p in range(0, count, 3):
                d.broker.set_leader(name, p, 2)
        moved_at = time.monotonic()
        acked = len(stream.acks)
        first_ack_s = wait_until(lambda: any(t > moved_at for t in stream.ack_times.values()), 10)
        stream.wait_acks(acked + 30)
        d.broker.broker_up(1)
        for name, count in ((d.topic, PARTITIONS), (d.dlq, 3)):
            for p in range(0, count, 3):
                d.broker.set_leader(name, p, 1)  # preferred leader back
        stream.wait_acks(len(stream.acks) + 30)
        stream.finish()
    print(f"\nleader down: first ack {first_ack_s:.3f} s after the leaders moved; "
          f"health {[s for _, s in health.changes]}")
    assert first_ack_s < 2.0 + SEND_TIMEOUT_S
    assert stream.failures == {}
    assert health.changes[-1][1] == "SERVING"
    assert d.metric("keystone_ingest_kafka_retries_total", kind="produce") > 0
    assert d.metric("keystone_ingest_kafka_producer_replacements_total", reason="stalled") == 0
    print(verify(d, stream, same_attempt_copies_allowed=True))


def test_injected_produce_errors_retriable_are_retried_a_permanent_one_fails_its_batches_clearly(deploy):
    d = deploy()
    with SustainedStream(d.server.target, seed=301) as stream:
        stream.wait_acks(10)
        # Retriable: the producer retries them itself; no batch notices.
        d.broker.push_request_errors("Produce", ["NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT",
                                                 "NOT_ENOUGH_REPLICAS", "LEADER_NOT_AVAILABLE"] * 2)
        stream.wait_acks(len(stream.acks) + 30)
        assert stream.failures == {}
        assert d.metric("keystone_ingest_kafka_retries_total", kind="produce") >= 8
        assert d.metric("keystone_ingest_kafka_producer_replacements_total", reason="failed_batch") == 0
        # Permanent: the batches in that Produce request fail with INTERNAL and
        # the broker's reason; the producer (whose sequence numbers the failed
        # record batches spent) is replaced and later batches go through.
        d.broker.push_request_errors("Produce", ["MSG_SIZE_TOO_LARGE"])
        wait_until(lambda: stream.failures, 15)
        acked = len(stream.acks)
        stream.wait_acks(acked + 30)
        stream.finish()
    failed = dict(stream.failures)
    for error in failed.values():
        assert isinstance(error, IngestRpcError) and error.code == grpc.StatusCode.INTERNAL and not error.retriable
    # The batch that failed on the broker says why; the others failed with it
    # because a permanent status ends the stream (the client library fails every
    # batch unacked on it).
    assert any("MessageSizeTooLargeError" in e.details for e in failed.values())
    assert d.metric("keystone_ingest_kafka_producer_replacements_total", reason="failed_batch") == 1
    assert d.metric("keystone_ingest_kafka_producer_state", state="connected") == 1
    # A caller that resends the failed batches (same batch_id) gets them in:
    # those the server had finished are answered from the batch_id window.
    with IngestClient(d.server.target, retry=CLIENT_RETRY) as client:
        resent = [client.send(stream.batches[b]) for b in failed]
        for batch_id, future in zip(failed, resent):
            ack = future.result(30)
            assert ack.status in (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE_BATCH)
            stream.acks[batch_id] = ack
    stream.failures.clear()
    # Injected errors are answered before anything is appended: no copy of one attempt.
    print(f"\ninjected errors: {len(failed)} batches failed permanently and were resent;",
          verify(d, stream, same_attempt_copies_allowed=False))


def test_a_producer_the_broker_refuses_is_replaced_and_nothing_acked_is_lost(deploy, client_logs):
    d = deploy()
    with HealthWatch(d) as health, SustainedStream(d.server.target, seed=401) as stream:
        stream.wait_acks(10)
        for replacements, error in enumerate(["OUT_OF_ORDER_SEQUENCE_NUMBER", "UNKNOWN_PRODUCER_ID"], start=1):
            d.broker.push_request_errors("Produce", [error])
            wait_until(lambda: d.metric("keystone_ingest_kafka_producer_replacements_total",
                                        reason="producer_state") == replacements, 15)
            stream.wait_acks(len(stream.acks) + 25)
        stream.finish()
    # Retriable for the client: the failed batches were resent, none was given up.
    assert stream.failures == {} and stream.client.stats.resends > 0
    assert any("OutOfOrderSequenceNumber" in (r["details"] or "") for r in client_logs.reconnects)
    assert any("UnknownProducerId" in (r["details"] or "") for r in client_logs.reconnects)
    assert d.metric("keystone_ingest_kafka_producer_state", state="connected") == 1
    # A replacement takes milliseconds here: health never crossed the threshold.
    assert [s for _, s in health.changes] == ["SERVING"]
    logs = [r for r in d.server.log_records() if r.get("msg") == "kafka producer replaced"]
    assert [r["generation"] for r in logs] == [2, 3]
    print("\nproducer replaced twice:", verify(d, stream, same_attempt_copies_allowed=False))
