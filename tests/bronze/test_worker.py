"""The Bronze worker against the session's Apache Kafka cluster: records
published by the real Kafka sink, Bronze in tmp_path (or moto's S3), read back
with pyarrow.dataset. Exact rows, exactly once."""

from __future__ import annotations

import asyncio
import json

import pyarrow.parquet as pq
import pytest
from bronzeutil import (
    bronze_rows,
    caught_up,
    expected_rows,
    make_batches,
    publish,
    read_bronze,
    run_worker_until_caught_up,
    worker_config,
)
from kafkautil import KafkaCluster, read_all
from keystone_ingest.server.bronze.commits import COMMITS, PENDING, CommitLog, Flush
from keystone_ingest.server.bronze.layout import QUARANTINE, partition_path
from keystone_ingest.server.bronze.storage import LocalStore
from keystone_ingest.server.bronze.worker import BronzeWorker


@pytest.fixture
def topics(kafka_cluster: KafkaCluster) -> tuple[str, str]:
    return kafka_cluster.new_topic("orders", partitions=4), kafka_cluster.new_topic("orders-dlq", partitions=2)


def run(coro, timeout_s: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def test_every_published_order_is_in_bronze_once_with_its_exact_rows(kafka_cluster, topics, tmp_path):
    topic, dlq = topics
    batches = make_batches(6, orders=300, spread_days=True)
    assert sum(b.rejected for b in batches) > 0
    run(publish(kafka_cluster.bootstrap, topic, dlq, batches))
    config = worker_config(kafka_cluster.bootstrap, topic, dlq, str(tmp_path / "bronze"))
    run(run_worker_until_caught_up(config))

    tables = read_bronze(tmp_path / "bronze")
    assert bronze_rows(tables) == expected_rows(batches)
    # Each row sits in its purchase day's partition; the quarantine keeps the original bytes.
    orders = tables["orders"]
    for ts, y, m, d in zip(
        orders["order_purchase_timestamp"].to_pylist(),
        orders["year"].to_pylist(),
        orders["month"].to_pylist(),
        orders["day"].to_pylist(),
        strict=True,
    ):
        assert (ts.year, ts.month, ts.day) == (y, m, d)
    # The quarantine keeps each rejected order's bytes and the validator's
    # message (carried in the dead-letter record's headers).
    quarantined = {
        (r["batch_id"], r["index"]): (r["raw"], r["message"], r["event_id"]) for r in tables[QUARANTINE].to_pylist()
    }
    for batch in batches:
        for r in batch.rejects.to_pylist():
            raw = batch.raw[r["offset"] : r["offset"] + r["length"]]
            assert quarantined[(batch.batch_id, r["index"])] == (raw, r["message"], r["event_id"])


def test_orders_kafka_holds_twice_reach_bronze_once(kafka_cluster, topics, tmp_path):
    # A resend after a failure: the same batch published again, so Kafka holds
    # every record of it twice (same event_id, same partition).
    topic, dlq = topics
    batches = make_batches(3, orders=200)
    run(publish(kafka_cluster.bootstrap, topic, dlq, [*batches, batches[1], batches[0]]))
    assert (
        len(read_all(kafka_cluster.bootstrap, topic))
        == sum(b.accepted for b in batches) + batches[0].accepted + batches[1].accepted
    )
    config = worker_config(kafka_cluster.bootstrap, topic, dlq, str(tmp_path / "bronze"))
    run(run_worker_until_caught_up(config))
    assert bronze_rows(read_bronze(tmp_path / "bronze")) == expected_rows(batches)


def test_a_new_worker_resumes_where_bronze_ends_and_remembers_the_events_before(kafka_cluster, topics, tmp_path):
    topic, dlq = topics
    first, second = make_batches(2, orders=250, seed=3), make_batches(2, orders=250, seed=4)
    config = worker_config(kafka_cluster.bootstrap, topic, dlq, str(tmp_path / "bronze"))
    run(publish(kafka_cluster.bootstrap, topic, dlq, first))
    status = run(run_worker_until_caught_up(config))
    # Then new orders, and a resend of what the first worker already wrote:
    # the second worker starts where Bronze ends and its dedup window, read
    # back from the log before that point, knows the first batches' events.
    run(publish(kafka_cluster.bootstrap, topic, dlq, second + first))
    status2 = run(run_worker_until_caught_up(config))
    assert all(status2[k]["committed"] >= status[k]["committed"] for k in status)
    assert bronze_rows(read_bronze(tmp_path / "bronze")) == expected_rows(first + second)


def test_a_flush_cut_short_is_deleted_and_written_again_whole(kafka_cluster, topics, tmp_path):
    topic, dlq = topics
    batches = make_batches(3, orders=200, spread_days=True)
    run(publish(kafka_cluster.bootstrap, topic, dlq, batches))
    root = tmp_path / "bronze"
    store = LocalStore(str(root))
    # What a worker killed mid-flush leaves: the pending marker and some of its files.
    ghost = Flush(
        "20260101T000000Z-deadbeef0000",
        {(topic, 0): (0, 10**6)},
        [f"{partition_path('orders', d)}/part-20260101T000000Z-deadbeef0000.parquet" for d in (17000, 17001)],
    )
    CommitLog(store).begin(ghost)
    for key in ghost.files:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"half a file")
    config = worker_config(kafka_cluster.bootstrap, topic, dlq, str(root))
    run(run_worker_until_caught_up(config))
    assert not any((root / key).exists() for key in ghost.files)
    assert store.list_keys(PENDING) == []
    assert bronze_rows(read_bronze(root)) == expected_rows(batches)
    # Every commit marker names the files it made visible, and they exist.
    for key in store.list_keys(COMMITS):
        doc = json.loads(store.get(key))
        assert all((root / f).exists() for f in doc["files"])


def _consume_then_stop(config, rounds: list[list]) -> BronzeWorker:
    """One worker consumes each round of batches as it is published, then stops."""

    async def go() -> BronzeWorker:
        worker = BronzeWorker(config)
        await worker.start()
        try:
            await worker.wait_joined()
            for batches in rounds:
                await publish(config.kafka_bootstrap, config.topic, config.dlq_topic, batches)
                await caught_up(worker, committed=False)
        finally:
            await worker.stop()
        return worker

    return run(go())


def _files(root) -> dict[str, list]:
    return {
        dest: sorted((root / dest).rglob("*.parquet"))
        for dest in ("orders", "order_items", "order_payments", "customers")
    }


def test_a_memory_budget_far_below_a_backfill_still_makes_one_file_per_table_and_day(kafka_cluster, topics, tmp_path):
    # ~700 purchase days arriving in six rounds through a 64 KiB buffer: a
    # spill per round at least, each appending row groups to the same open
    # file per (table, day); one flush (at stop) publishes them all.
    topic, dlq = topics
    batches = make_batches(6, orders=500, spread_days=True, invalid_ratio=0.0)
    root = tmp_path / "bronze"
    config = worker_config(
        kafka_cluster.bootstrap, topic, dlq, str(root), roll_age_s=600.0, bronze_max_buffered_bytes=64 << 10
    )
    _consume_then_stop(config, [[b] for b in batches])

    assert len(LocalStore(str(root)).list_keys(COMMITS)) == 1
    tables = read_bronze(root)
    assert bronze_rows(tables) == expected_rows(batches)
    files = _files(root)
    for dest, paths in files.items():
        t = tables[dest]
        days = set(zip(t["year"].to_pylist(), t["month"].to_pylist(), t["day"].to_pylist(), strict=True))
        assert len(paths) == len(days) > 600, dest
    assert max(pq.ParquetFile(p).num_row_groups for p in files["orders"]) > 1


@pytest.mark.parametrize(
    "limit", [{"bronze_roll_bytes": 1}, {"bronze_max_open_files": 1}, {"bronze_when_full": "flush"}]
)
def test_files_are_published_once_one_reaches_the_roll_size_too_many_are_open_or_a_full_buffer_flushes(
    kafka_cluster, topics, tmp_path, limit
):
    topic, dlq = topics
    batches = make_batches(5, orders=300, invalid_ratio=0.0)
    root = tmp_path / "bronze"
    config = worker_config(
        kafka_cluster.bootstrap, topic, dlq, str(root), roll_age_s=600.0, bronze_max_buffered_bytes=16 << 10, **limit
    )
    _consume_then_stop(config, [[b] for b in batches])

    # Without the limit, the one flush at stop would hold everything.
    commits = LocalStore(str(root)).list_keys(COMMITS)
    assert len(commits) > 3
    assert bronze_rows(read_bronze(root)) == expected_rows(batches)
    assert len(_files(root)["orders"]) >= len(commits) - 1


def test_bronze_on_s3_exactly_once_across_two_workers_in_turn(kafka_cluster, topics, s3, tmp_path):
    topic, dlq = topics
    batches = make_batches(4, orders=200, seed=9)
    run(publish(kafka_cluster.bootstrap, topic, dlq, batches[:2]))
    config = worker_config(
        kafka_cluster.bootstrap,
        topic,
        dlq,
        s3.uri("bronze"),
        s3_endpoint_url=s3.endpoint_url,
        spool_dir=str(tmp_path / "spool"),
    )
    run(run_worker_until_caught_up(config))
    run(publish(kafka_cluster.bootstrap, topic, dlq, batches[2:] + batches[:1]))
    run(run_worker_until_caught_up(config))
    tables = read_bronze(f"{s3.bucket}/bronze", filesystem=s3.filesystem())
    assert bronze_rows(tables) == expected_rows(batches)


def test_lag_metrics_say_how_far_behind_bronze_is(kafka_cluster, topics, tmp_path):
    topic, dlq = topics
    batches = make_batches(2, orders=100, invalid_ratio=0.0)

    async def scenario():
        await publish(kafka_cluster.bootstrap, topic, dlq, batches)
        config = worker_config(kafka_cluster.bootstrap, topic, dlq, str(tmp_path / "bronze"))
        worker = BronzeWorker(config)
        await worker.start()
        try:
            await worker.wait_joined()
            await caught_up(worker)
            # Read as /metrics shows them: a sample the worker never set is None, not 0.
            registry = worker.metrics.registry
            lags = [
                registry.get_sample_value("keystone_bronze_lag_records", {"topic": topic, "partition": str(p)})
                for p in range(4)
            ]
            records = registry.get_sample_value("keystone_bronze_records_total", {"topic": topic})
            return lags, records
        finally:
            await worker.stop()

    lags, records = run(scenario())
    assert lags == [0, 0, 0, 0]
    assert records == sum(b.accepted for b in batches)
