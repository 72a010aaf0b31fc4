"""Kafka failing under a sustained stream, for real: a `keystone-ingest serve`
process on the session's 3-node Apache Kafka cluster whose nodes the tests
SIGKILL, stop and start, and on topics whose limits they choose (fewer
in-sync replicas than min.insync.replicas, a small max.message.bytes), while a
client library stream keeps sending. Produce error codes a real broker cannot
give on demand are injected into librdkafka's mock cluster instead. Afterwards
an independent consumer (read_committed) and a Parquet read check that every
acked order is in Kafka with its exact bytes and headers and in Bronze, that
Bronze holds no order twice, and that Kafka holds a copy of an order only
where the README says it can ("When Kafka can hold an order twice").
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pyarrow.dataset as ds
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from kafkautil import KafkaCluster, Record, read_all
from keystone_ingest.client.client import IngestClient, IngestRpcError, RetryPolicy
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.dev.mockbroker import MockBroker
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.errors import SinkFailed, SinkUnavailable, to_rpc_status
from reliabilityutil import expected_from, health, metric, metrics
from serverutil import wait_bronze_caught_up
from waiting import wait_until

PARTITIONS = 12
UNARY_METHOD = "/keystone.ingest.v1.OrderIngest/IngestOrders"
SEND_TIMEOUT_S = 3.0
UNAVAILABLE_THRESHOLD_S = 2.0
# Tiny client backoff: a reconnect delay of half a second or more can then only
# come from the server's RetryInfo (the sink asks for 0.5 to 1 s).
CLIENT_RETRY = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, deadline_s=60.0)


# -- the deployment -------------------------------------------------------------------


@dataclass
class Deployment:
    bootstrap: str
    broker: MockBroker | None  # None on the real cluster
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
    """A server on `cluster` (the real one, topics made fresh) or, without
    one, on a private mock cluster; the server's flags follow the defaults
    here, `extra_args` win. Everything started is closed at teardown."""
    started: list[Deployment] = []

    def start(
        *extra_args: str,
        cluster: KafkaCluster | None = None,
        topic_config: dict | None = None,
        assignment: list[list[int]] | None = None,
    ) -> Deployment:
        if cluster is not None:
            broker = None
            bootstrap = cluster.bootstrap
            topic = cluster.create_topic(
                f"orders-{uuid.uuid4().hex[:8]}", PARTITIONS, config=topic_config, assignment=assignment
            )
            dlq = cluster.new_topic("dlq", 3)
        else:
            broker = MockBroker(brokers=3, partitions=PARTITIONS)
            bootstrap = broker.bootstrap
            topic, dlq = "orders", "orders.dlq"
            broker.create_topic(topic, partitions=PARTITIONS)
            broker.create_topic(dlq, partitions=3)
            # Known leaders: partition p on broker p % 3 + 1.
            for name, count in ((topic, PARTITIONS), (dlq, 3)):
                for p in range(count):
                    broker.set_leader(name, p, p % 3 + 1)
        # On the mock cluster no Bronze worker runs: aiokafka cannot join a
        # consumer group there, and those tests are about the produce path.
        bronze_uri = f"file://{tmp_path / 'bronze'}" if cluster is not None else ""
        args = [
            "--kafka-bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--dlq-topic",
            dlq,
            "--bronze-uri",
            bronze_uri,
            "--linger-ms",
            "2",
            "--send-timeout-s",
            str(SEND_TIMEOUT_S),
            "--kafka-unavailable-threshold-s",
            str(UNAVAILABLE_THRESHOLD_S),
            "--core-threads",
            "1",
            *extra_args,
        ]
        try:
            server = ServerProcess(args)
        except BaseException:
            if broker is not None:
                broker.close()
            raise
        d = Deployment(bootstrap, broker, server, topic, dlq, tmp_path / "bronze")
        started.append(d)
        return d

    yield start
    for d in started:
        d.server.close()
        if d.broker is not None:
            d.broker.close()


# -- the sustained stream -------------------------------------------------------------


class SustainedStream:
    """One client stream sending batches of `orders` orders at `rate` batches/s
    from a thread, until stopped; records every batch, ack and failure."""

    def __init__(
        self, target: str, seed: int, orders: int = 80, rate: float = 12.0, ack_timeout_s: float = 30.0
    ) -> None:
        self.client = IngestClient(target, max_in_flight=8, retry=CLIENT_RETRY, ack_timeout_s=ack_timeout_s)
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
        wait_until(lambda: len(self.acks) >= count, timeout_s, what=lambda: f"{count} acks (have {len(self.acks)})")

    def finish(self, timeout_s: float = 40.0) -> None:
        """Stop sending and wait until every batch sent is acked or failed."""
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the stream thread is stuck in send()"
        wait_until(
            lambda: len(self.acks) + len(self.failures) >= len(self.batches),
            timeout_s,
            what="every batch sent acked or failed",
        )


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
    (same timestamp) only where the mock cluster can append a retried Produce
    request twice (its answer lost in a broker outage); a real broker drops
    an idempotent producer's retry of what it already appended. Returns the copies,
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
            assert (r.key, r.value, r.headers, r.partition) == (
                first.key,
                first.value,
                first.headers,
                first.partition,
            ), k
        stamps = [r.timestamp_ms for r in group]
        same_attempt += len(stamps) - len(set(stamps))
        if not same_attempt_copies_allowed:
            assert len(set(stamps)) == len(stamps), f"{k}: two copies from one attempt {stamps}"
    return copies, same_attempt


def verify(
    d: Deployment,
    stream: SustainedStream,
    *,
    same_attempt_copies_allowed: bool,
    also_sent: tuple[ingest_pb2.OrderBatch, ...] = (),
) -> dict[str, int]:
    """Waits for the Bronze worker to catch up, stops the server with SIGTERM,
    then checks Kafka and Bronze (Bronze only on the real cluster: on the mock
    no Bronze worker runs). `also_sent`: batches sent outside the stream and not acked."""
    acked = [
        stream.batches[b]
        for b, ack in stream.acks.items()
        if ack.status in (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE_BATCH)
    ]
    assert len(acked) == len(stream.acks)
    expected = expected_from(acked)
    sent = expected_from([*stream.batches.values(), *also_sent])
    if d.broker is None:
        wait_bronze_caught_up(d.bootstrap, [d.topic, d.dlq], f"file://{d.bronze}", timeout_s=90)
    assert d.server.stop() == 0, d.server.logs()[-3000:]

    records = read_all(d.bootstrap, d.topic, timeout_s=30)
    in_kafka = {r.header("event_id").decode() for r in records}
    assert set(expected.order_bytes) <= in_kafka  # every acked order is in Kafka
    assert in_kafka <= set(sent.order_bytes)  # and nothing that was not sent
    for r in records:
        event_id = r.header("event_id").decode()
        assert r.value == sent.order_bytes[event_id]  # the client's bytes
        assert r.key == ingest_pb2.Order.FromString(r.value).order_id.encode()
    copies, same_attempt = check_copies(
        records, lambda r: r.header("event_id"), same_attempt_copies_allowed=same_attempt_copies_allowed
    )

    dead = read_all(d.bootstrap, d.dlq, timeout_s=30)
    in_dlq = {(r.header("batch_id").decode(), int(r.header("error.index"))): r.value for r in dead}
    assert set(expected.rejects) <= set(in_dlq)
    assert all(in_dlq[k] == sent.rejects[k] for k in in_dlq)
    check_copies(
        dead,
        lambda r: (r.header("batch_id"), r.header("error.index")),
        same_attempt_copies_allowed=same_attempt_copies_allowed,
    )

    report = {
        "acked_orders": len(expected.order_bytes),
        "kafka_records": len(records),
        "kafka_copies": copies,
        "of_one_attempt": same_attempt,
    }
    if d.broker is not None:
        return report
    orders = ds.dataset(d.bronze / "orders", format="parquet", partitioning="hive").to_table(columns=["event_id"])
    bronze_ids = orders["event_id"].to_pylist()
    assert len(bronze_ids) == len(set(bronze_ids)), "an order twice in Bronze"
    assert set(expected.order_bytes) <= set(bronze_ids) <= set(sent.order_bytes)
    quarantine = (
        ds.dataset(d.bronze / "_quarantine", format="parquet", partitioning="hive")
        .to_table(columns=["batch_id", "index"])
        .to_pylist()
    )
    quarantined = [(r["batch_id"], r["index"]) for r in quarantine]
    assert len(quarantined) == len(set(quarantined))
    assert set(expected.rejects) <= set(quarantined)
    return {**report, "bronze_orders": len(bronze_ids)}


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


def unary_refusal(d: Deployment, batch: ingest_pb2.OrderBatch, timeout_s: float) -> grpc.RpcError:
    """Send `batch` as one unary call and return the error it must end with."""
    with grpc.insecure_channel(d.server.target) as channel:
        unary = channel.unary_unary(UNARY_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as failure:
            unary(batch.SerializeToString(), timeout=timeout_s)
    return failure.value


# Batches wait for Kafka longer than any failure below lasts (a restart of the
# whole cluster included), so the streams stay open and nothing is resent.
PATIENT = ("--send-timeout-s", "90")


def test_sigkill_of_a_partition_leader_mid_stream_moves_leadership_loses_nothing_and_writes_nothing_twice(
    breakable_kafka: KafkaCluster, deploy
):
    cluster = breakable_kafka
    d = deploy(*PATIENT, cluster=cluster)
    with HealthWatch(d) as health, SustainedStream(d.server.target, seed=201, ack_timeout_s=120) as stream:
        stream.wait_acks(20)
        led = {p for p in range(PARTITIONS) if cluster.leader(d.topic, p) == cluster.leader(d.topic, 0)}
        killed = cluster.kill_leader(d.topic, 0)
        killed_at = time.monotonic()
        # The controller fences the silent node and elects new leaders from the ISR.
        moved_s = wait_until(
            lambda: all(cluster.leader(d.topic, p) != killed for p in led), 30, step_s=0.2, what="leadership moved"
        )
        first_ack_s = wait_until(
            lambda: any(t > killed_at + moved_s for t in stream.ack_times.values()), 30, what="an ack after the move"
        )
        stream.wait_acks(len(stream.acks) + 30, 60)
        cluster.start_node(killed)
        cluster.wait_in_sync([d.topic])
        stream.wait_acks(len(stream.acks) + 30, 60)
        stream.finish()
        replaced = d.metric("keystone_ingest_kafka_producer_replacements_total", reason="stalled")
    print(
        f"\nleader {killed} SIGKILLed: leadership of {len(led)} partitions moved in {moved_s:.1f} s, "
        f"first ack {first_ack_s:.1f} s after it moved; health {[s for _, s in health.changes]}"
    )
    # The producer followed the leaders: no batch failed, none was resent.
    assert stream.failures == {} and stream.client.stats.resends == 0
    assert replaced == 0
    result = verify(d, stream, same_attempt_copies_allowed=False)
    # The idempotent producer's retries of record batches the dead leader had
    # taken (and perhaps replicated) were deduplicated by the new leader.
    assert result["kafka_copies"] == 0, result
    print(result)


def test_all_brokers_stopped_for_10_s_streams_stay_open_batches_wait_and_every_one_is_acked(
    breakable_kafka: KafkaCluster, deploy, client_logs
):
    cluster = breakable_kafka
    d = deploy(*PATIENT, cluster=cluster)
    with HealthWatch(d) as health, SustainedStream(d.server.target, seed=101, ack_timeout_s=120) as stream:
        stream.wait_acks(20)
        down_at = time.monotonic()
        cluster.stop_all()
        stopped_at = time.monotonic()
        time.sleep(max(0.0, down_at + 10 - time.monotonic()))  # the outage lasts 10 s: the subject, not a sync
        assert health.status_at(time.monotonic()) == "NOT_SERVING"
        assert d.metric("keystone_ingest_kafka_available") == 0
        waiting = len(stream.batches) - len(stream.acks)
        restart_at = time.monotonic()
        cluster.start_all()
        up_at = time.monotonic()  # every node answers (they took writes a little earlier)
        first_ack_s = wait_until(
            lambda: any(t > restart_at for t in stream.ack_times.values()), 30, what="an ack after the restart"
        )
        wait_until(lambda: health.status_at(time.monotonic()) == "SERVING", 10, what="health SERVING")
        stream.wait_acks(len(stream.acks) + 30, 60)
        stream.finish()
    print(
        f"\nall brokers stopped ({stopped_at - down_at:.1f} s to stop) for {restart_at - down_at:.1f} s; "
        f"{waiting} batches waited; the nodes answered {up_at - restart_at:.1f} s after their start and the first "
        f"ack came {first_ack_s:.1f} s after it; health {[(round(t - down_at, 1), s) for t, s in health.changes]}"
    )
    assert waiting > 0
    # Nothing was acked while no broker ran (acks Kafka gave before the last
    # node stopped may still have been on their way for a moment).
    assert [t for t in stream.ack_times.values() if stopped_at + 1.0 < t < restart_at] == []
    went_down = [t for t, s in health.changes if s == "NOT_SERVING"]
    assert went_down and went_down[0] > down_at
    assert health.changes[-1][1] == "SERVING" and health.changes[-1][0] > restart_at
    # The streams stayed open: no batch failed, none was resent, no reconnect.
    stats = stream.client.stats
    assert stream.failures == {} and (stats.resends, stats.reconnects) == (0, 0), client_logs.reconnects
    assert d.metric("keystone_ingest_kafka_unavailable_seconds_total") >= 7
    assert d.metric("keystone_ingest_kafka_producer_state", state="connected") == 1
    result = verify(d, stream, same_attempt_copies_allowed=False)
    assert result["kafka_copies"] == 0, result
    print(result)


def test_fewer_in_sync_replicas_than_min_insync_fails_batches_unavailable_with_retry_info_and_resumes(
    breakable_kafka: KafkaCluster, deploy, client_logs
):
    cluster = breakable_kafka
    # Every partition on nodes 1 and 2 only: min.insync.replicas is 2, so with
    # node 2 stopped acks=all cannot be met and the leader answers NOT_ENOUGH_REPLICAS.
    d = deploy(cluster=cluster, assignment=[[1, 2]] * PARTITIONS)
    with HealthWatch(d) as health, SustainedStream(d.server.target, seed=501) as stream:
        stream.wait_acks(10)
        cluster.stop_node(2)  # a controlled shutdown: the ISR shrinks to node 1
        stopped_at = time.monotonic()
        # Produce requests the leader took before the ISR shrank wait for
        # node 2 until they time out (request_timeout_ms, 10 s); later ones
        # are answered NOT_ENOUGH_REPLICAS at once. Each refusal below is a
        # batch of its own that fails on the 3 s send deadline, saying why.
        refused: list[ingest_pb2.OrderBatch] = []
        error: grpc.RpcError | None = None
        while error is None or "NotEnoughReplicasError" not in error.details():
            assert time.monotonic() - stopped_at < 40, error and error.details()
            refused.append(OrderGenerator(seed=502 + len(refused)).batch(5))
            error = unary_refusal(d, refused[-1], SEND_TIMEOUT_S + 10)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details().startswith(
                f"Kafka did not ack batch {refused[-1].batch_id!r} within {SEND_TIMEOUT_S} s"
            )
            assert 0.5 <= retry_delay_of(error) <= 1.0
        assert error.details().endswith("(Kafka answered NotEnoughReplicasError)")
        wait_until(lambda: health.status_at(time.monotonic()) == "NOT_SERVING", 15, what="health NOT_SERVING")
        restart_at = time.monotonic()
        cluster.start_node(2)
        cluster.wait_in_sync([d.topic])
        back_at = time.monotonic()
        first_ack_s = wait_until(
            lambda: any(t > back_at for t in stream.ack_times.values()), 30, what="an ack after node 2 is back"
        )
        wait_until(lambda: health.status_at(time.monotonic()) == "SERVING", 10, what="health SERVING")
        stream.wait_acks(len(stream.acks) + 30, 60)
        stream.finish()
    print(f"\nnode 2 stopped for {back_at - stopped_at:.1f} s: first ack {first_ack_s:.3f} s after it was in sync")
    assert [t for t in stream.ack_times.values() if stopped_at + SEND_TIMEOUT_S < t < restart_at] == []
    # The stream's batches failed the same way; the client waited as told and resent them.
    assert stream.failures == {} and stream.client.stats.resends > 0
    kafka_reasons = [r for r in client_logs.reconnects if "Kafka" in (r["details"] or "")]
    assert kafka_reasons and all(0.5 <= r["delay_s"] <= 1.1 for r in kafka_reasons), client_logs.reconnects
    assert d.metric("keystone_ingest_kafka_retries_total", kind="produce") > 0
    # What was refused may still have been appended once node 2 came back
    # (the producer retries it): a copy from a second attempt at most.
    print(verify(d, stream, same_attempt_copies_allowed=False, also_sent=tuple(refused)))


def test_a_topic_with_a_small_max_message_bytes_gets_smaller_record_batches_and_a_too_large_order_a_clear_error(
    kafka_cluster: KafkaCluster, deploy
):
    d = deploy(cluster=kafka_cluster, topic_config={"max.message.bytes": "16384"})
    huge = OrderGenerator(seed=601).batch(3)
    for k in range(200):
        huge.orders[1].items.add(order_item_id=k + 100, product_id=f"p{k:063d}", seller_id=f"s{k:063d}", price_cents=1)
    with SustainedStream(d.server.target, seed=602, orders=400, rate=4) as stream:
        stream.wait_acks(10)
        error = unary_refusal(d, huge, 30)
        stream.wait_acks(len(stream.acks) + 10)
        stream.finish()
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == (
        f"order {huge.orders[1].event_id!r} of batch {huge.batch_id!r} is {huge.orders[1].ByteSize()} bytes, too "
        f"large for a Kafka record on topic {d.topic} (max.message.bytes 16384); the batch was not published"
    )
    # 400-order batches (~60 KiB a partition) went through in record batches under the limit.
    assert stream.failures == {}
    assert d.metric("keystone_ingest_kafka_producer_replacements_total", reason="failed_batch") == 0
    result = verify(d, stream, same_attempt_copies_allowed=False, also_sent=(huge,))
    assert result["kafka_copies"] == 0
    in_kafka = {r.header("batch_id") for r in read_all(d.bootstrap, d.topic)}
    assert huge.batch_id.encode() not in in_kafka
    print(result)


def test_injected_produce_errors_retriable_are_retried_a_permanent_one_fails_its_batches_clearly(deploy):
    d = deploy()
    with SustainedStream(d.server.target, seed=301) as stream:
        stream.wait_acks(10)
        # Retriable: the producer retries them itself; no batch notices.
        d.broker.push_request_errors(
            "Produce",
            ["NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT", "NOT_ENOUGH_REPLICAS", "LEADER_NOT_AVAILABLE"] * 2,
        )
        stream.wait_acks(len(stream.acks) + 30)
        assert stream.failures == {}
        assert d.metric("keystone_ingest_kafka_retries_total", kind="produce") >= 8
        assert d.metric("keystone_ingest_kafka_producer_replacements_total", reason="failed_batch") == 0
        # Permanent: the batches in that Produce request fail with INTERNAL and
        # the broker's reason; the producer (whose sequence numbers the failed
        # record batches spent) is replaced and later batches go through.
        d.broker.push_request_errors("Produce", ["MSG_SIZE_TOO_LARGE"])
        wait_until(lambda: stream.failures, 15, what="a batch failing permanently")
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
        for batch_id, future in zip(failed, resent, strict=True):
            ack = future.result(30)
            assert ack.status in (ingest_pb2.ACK_STATUS_ACCEPTED, ingest_pb2.ACK_STATUS_DUPLICATE_BATCH)
            stream.acks[batch_id] = ack
    stream.failures.clear()
    # Injected errors are answered before anything is appended: no copy of one attempt.
    print(
        f"\ninjected errors: {len(failed)} batches failed permanently and were resent;",
        verify(d, stream, same_attempt_copies_allowed=False),
    )


def test_a_producer_the_broker_refuses_is_replaced_and_nothing_acked_is_lost(deploy, client_logs):
    d = deploy()
    with HealthWatch(d) as health, SustainedStream(d.server.target, seed=401) as stream:
        stream.wait_acks(10)
        for replacements, error in enumerate(["OUT_OF_ORDER_SEQUENCE_NUMBER", "UNKNOWN_PRODUCER_ID"], start=1):
            d.broker.push_request_errors("Produce", [error])
            wait_until(
                lambda expected=replacements: (
                    d.metric("keystone_ingest_kafka_producer_replacements_total", reason="producer_state") == expected
                ),
                15,
                what=f"producer replacement {replacements}",
            )
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
