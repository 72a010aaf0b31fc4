"""Crashes for real: `keystone-ingest serve` processes killed with SIGKILL
mid-stream and restarted on the same write-ahead log and Bronze directory, and
logs damaged on disk before a start. Afterwards an independent consumer and a
Parquet read check that every acked order is in Kafka and in Bronze, that
Bronze holds no order twice, and that Kafka holds copies only with the same
event_id and bytes (README, "When Kafka can hold an order twice")."""

from __future__ import annotations

import os
import random
import signal
import time

import pyarrow.dataset as ds
import pytest
from kafkautil import KafkaCluster
from reliabilityutil import ACKED, Stream, check_kafka_and_bronze, expected_from, metric

from keystone_ingest.client.client import IngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.server.wal import _RECORD_HEADER, decode_record, scan_segment


class Site:
    """One Kafka topic pair, one write-ahead log and one Bronze directory that
    every server of a test shares, as one host restarting its server would."""

    def __init__(self, cluster: KafkaCluster, tmp_path, *extra: str) -> None:
        self.cluster = cluster
        self.topic = cluster.new_topic("orders", partitions=12)
        self.dlq = cluster.new_topic("orders-dlq", partitions=3)
        self.wal = tmp_path / "wal"
        self.bronze = tmp_path / "bronze"
        self.args = ["--kafka-bootstrap", cluster.bootstrap, "--topic", self.topic, "--dlq-topic", self.dlq,
                     "--bronze-uri", f"file://{self.bronze}", "--wal-dir", str(self.wal), "--linger-ms", "2",
                     "--core-threads", "1", *extra]  # fmt: skip
        self.servers: list[ServerProcess] = []

    def start(self) -> ServerProcess:
        server = ServerProcess(self.args)
        self.servers.append(server)
        return server

    def bronze_table(self, name: str):
        path = self.bronze / name
        if not path.is_dir():
            return None
        return ds.dataset(path, format="parquet", partitioning="hive").to_table()

    def check(self, acked: list[ingest_pb2.OrderBatch], sent: list[ingest_pb2.OrderBatch]) -> dict[str, int]:
        return check_kafka_and_bronze(self.cluster.bootstrap, self.topic, self.dlq, self.bronze_table,
                                      expected_from(acked), expected_from(sent))  # fmt: skip

    def close(self) -> None:
        for server in self.servers:
            server.close()


@pytest.fixture
def site(kafka_cluster: KafkaCluster, tmp_path):
    sites: list[Site] = []

    def make(*extra: str) -> Site:
        s = Site(kafka_cluster, tmp_path, *extra)
        sites.append(s)
        return s

    yield make
    for s in sites:
        s.close()


def kill(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)


def recovered(server: ServerProcess) -> dict:
    return next(r for r in server.log_records() if r.get("msg") == "wal: recovered")


ROUNDS = 20


def test_sigkill_at_random_moments_loses_no_acked_order_and_writes_none_twice(site):
    """20 rounds of: start a server, stream (unacked batches of earlier rounds
    first, same batch_ids and bytes), SIGKILL it after 0.2 to 1.5 s. Files roll
    every 0.3 s, so kills land while files are being written and published.
    Then a last server takes what is left and stops cleanly."""
    seed = int(os.environ.get("CRASH_SEED", time.time()))
    print(f"CRASH_SEED={seed}")
    rng = random.Random(seed)
    s = site("--roll-age-s", "0.3", "--shutdown-grace-s", "10")
    generator = OrderGenerator(seed=seed, duplicate_ratio=0.03, invalid_ratio=0.02)
    batches = [generator.batch(40) for _ in range(800)]
    acked: dict[str, ingest_pb2.BatchAck] = {}
    duplicate_batches = replayed = resolved = 0
    for _ in range(ROUNDS):
        pending = [b for b in batches if b.batch_id not in acked]
        server = s.start()
        stream = Stream(server.target, pending, rate=30)
        time.sleep(rng.uniform(0.2, 1.5))
        kill(server)
        stream.stop()
        assert all(a.status in ACKED for a in stream.acks.values())
        duplicate_batches += sum(a.status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH for a in stream.acks.values())
        acked.update(stream.acks)
        replayed += recovered(server)["records"]
        resolved += any(r.get("msg") == "wal: resolved the Bronze files of the last run" for r in server.log_records())
        server.close()

    # The last server also gets 20 batches acked by servers that were killed,
    # as a client that never saw those acks would resend them: each is answered
    # from the batch_id window rebuilt from the log, with its first counts.
    resent = {b.batch_id: acked[b.batch_id] for b in batches if b.batch_id in acked}
    resent = dict(list(resent.items())[-20:])
    server = s.start()
    stream = Stream(server.target, [b for b in batches if b.batch_id in resent or b.batch_id not in acked], rate=200)
    stream.wait(90)
    assert not stream.failures, list(stream.failures.values())[:3]
    for batch_id, first in resent.items():
        again = stream.acks[batch_id]
        assert again.status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH, (batch_id, again)
        assert (again.accepted, again.duplicates, again.rejected) == (first.accepted, first.duplicates, first.rejected)
    duplicate_batches += len(resent)
    stream.acks = {k: v for k, v in stream.acks.items() if k not in resent}
    acked.update(stream.acks)
    assert server.stop() == 0, server.logs()[-3000:]
    # The runs did what the test is about: logs replayed after kills and files
    # cut off by a kill resolved (DUPLICATE_BATCH answers are checked above).
    assert replayed > 0 and resolved > 0, (replayed, resolved)
    report = s.check([b for b in batches if b.batch_id in acked], batches)
    assert report["acked_orders"] > 10_000
    # All in Bronze after the clean stop: no record left in the log (a segment
    # opened for the next append may remain, holding only its header).
    assert [n for n in os.listdir(s.wal) if n.endswith(".wal") and scan_segment((s.wal / n).read_bytes()).records] == []
    print(f"{ROUNDS} kills: {report}, DUPLICATE_BATCH answers {duplicate_batches}, records replayed {replayed}")


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_log_tail_is_cut_at_start_and_bronze_gets_exactly_the_complete_records(site, damage):
    s = site("--roll-age-s", "600")  # nothing reaches Bronze before the kill: it all comes from the log
    generator = OrderGenerator(seed=41, invalid_ratio=0.05)
    batches = [generator.batch(50) for _ in range(10)]
    server = s.start()
    with IngestClient(server.target) as client:
        assert all(client.ingest(b).status == ingest_pb2.ACK_STATUS_ACCEPTED for b in batches)
    kill(server)

    [segment] = [s.wal / n for n in os.listdir(s.wal) if n.endswith(".wal")]
    data = segment.read_bytes()
    scan = scan_segment(data)
    assert [seq for seq, _, _ in scan.records] == list(range(1, 11))
    _, offset, length = scan.records[-1]
    payload = data[offset + _RECORD_HEADER.size : offset + _RECORD_HEADER.size + length]
    assert decode_record(10, payload, with_rows=False).batch_id == batches[-1].batch_id
    if damage == "corrupt":
        with open(segment, "r+b") as f:
            f.seek(offset + _RECORD_HEADER.size + length // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        os.truncate(segment, offset + _RECORD_HEADER.size + length // 2)
    cut = os.path.getsize(segment) - offset

    server = s.start()
    [record] = [r for r in server.log_records() if r.get("msg", "").startswith("wal: cut the log at the last good record")]
    assert (record["offset"], record["bytes_cut"], record["records_kept"]) == (offset, cut, 9)
    assert ("checksum" if damage == "corrupt" else "torn") in record["msg"]
    assert recovered(server)["records"] == 9
    assert metric(server.metrics_port, "keystone_ingest_wal_truncated_bytes_total") == cut
    assert os.path.getsize(segment) == offset
    assert server.stop() == 0
    s.check(batches[:9], batches)
    orders = s.bronze_table("orders")["event_id"].to_pylist()
    assert set(orders) == set(expected_from(batches[:9]).order_bytes)  # exactly the complete records

    # The cut batch is forgotten by both windows: its resend is taken in full.
    server = s.start()
    with IngestClient(server.target) as client:
        ack = client.ingest(batches[-1])
    assert (ack.status, ack.accepted) == (ingest_pb2.ACK_STATUS_ACCEPTED, expected_accepted(batches[-1]))
    assert server.stop() == 0
    report = s.check(batches, batches)
    assert report["kafka_copies"] == expected_accepted(batches[-1])  # its first attempt's records, same bytes


def expected_accepted(batch: ingest_pb2.OrderBatch) -> int:
    return len(expected_from([batch]).order_bytes)


def test_a_resend_after_a_crash_is_a_duplicate_batch_and_its_orders_duplicates(site):
    """The batch_id and dedup windows survive a SIGKILL (rebuilt from the log)
    and a clean restart (from the snapshot, the log being empty)."""
    s = site("--roll-age-s", "0.5")
    generator = OrderGenerator(seed=43, duplicate_ratio=0.0, invalid_ratio=0.0)
    first = [generator.batch(30) for _ in range(5)]
    server = s.start()
    with IngestClient(server.target) as client:
        first_acks = [client.ingest(b) for b in first]
    assert all(a.status == ingest_pb2.ACK_STATUS_ACCEPTED for a in first_acks)
    time.sleep(1.0)  # some files published, some not: the kill finds both
    kill(server)

    def copies_of(batches, batch_id: str, new: int) -> ingest_pb2.OrderBatch:
        """A new batch: every order of `batches` again, plus `new` orders never seen."""
        batch = generator.batch(new, batch_id=batch_id)
        for b in batches:
            batch.orders.extend(b.orders)
        return batch

    server = s.start()
    assert recovered(server)["records"] == 5
    again = copies_of(first, "copies-1", new=5)
    with IngestClient(server.target) as client:
        resent = [client.ingest(b) for b in first]
        copies_ack = client.ingest(again)
    for ack, original in zip(resent, first_acks, strict=True):
        assert ack.status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH
        assert (ack.accepted, ack.duplicates, ack.rejected) == (original.accepted, original.duplicates, original.rejected)
    assert (copies_ack.accepted, copies_ack.duplicates) == (5, 150)  # the dedup window came back too
    assert server.stop() == 0
    assert [n for n in os.listdir(s.wal) if n.endswith(".wal") and scan_segment((s.wal / n).read_bytes()).records] == []
    assert (s.wal / "snapshot").exists()

    server = s.start()  # from the snapshot alone
    assert recovered(server)["snapshot_seq"] == 6 and recovered(server)["records"] == 0
    with IngestClient(server.target) as client:
        assert all(client.ingest(b).status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH for b in [*first, again])
        ack = client.ingest(copies_of([*first, again], "copies-2", new=0))
    assert (ack.accepted, ack.duplicates) == (0, 305)
    assert server.stop() == 0
    report = s.check([*first, again], [*first, again])
    assert report["kafka_copies"] == 0  # nothing was published twice either
    assert report["bronze_orders"] == 155
