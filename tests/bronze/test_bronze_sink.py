"""The Bronze sink end to end: real files in tmp_path, real S3 (moto over HTTP),
read back with pyarrow.dataset."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from s3util import S3Server, start_s3

from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import TABLES, Core
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.errors import ShuttingDown, SinkFailed, SinkUnavailable
from keystone_ingest.server.sinks import bronze
from keystone_ingest.server.sinks.bronze import (
    QUARANTINE,
    QUARANTINE_SCHEMA,
    BronzeConfig,
    BronzeRows,
    BronzeSink,
    partition_path,
)

DAY = dt.date(2017, 11, 24)  # Olist's busiest day (Black Friday)

# -- helpers

PARTITION_COLUMNS = ["year", "month", "day"]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
    """Run an async test body with a bound, so a hang fails instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@dataclass
class Sent:
    """A batch as the client built it (`proto`) and as the server hands it to the sinks."""

    proto: ingest_pb2.OrderBatch
    batch: Batch


def generate(
    batches: int,
    orders: int = 500,
    *,
    seed: int = 1,
    duplicate_ratio: float = 0.02,
    invalid_ratio: float = 0.02,
    day: dt.date | None = None,
    days: int = 1,
) -> list[Sent]:
    """Generated batches through one Core (duplicates within and across batches
    are dropped, invalid orders rejected). Purchase dates spread over ~2 years
    as in Olist; with `day`, each purchase timestamp is moved to one of `days`
    UTC days from `day` (keeping its time of day), which keeps the number of
    files (and the test's time) small."""
    gen = OrderGenerator(seed=seed, duplicate_ratio=duplicate_ratio, invalid_ratio=invalid_ratio)
    core = Core()
    sent = []
    for _ in range(batches):
        proto = gen.batch(orders)
        if day is not None:
            midnight = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
            for i, order in enumerate(proto.orders):
                if order.HasField("order_purchase_timestamp"):
                    ts = order.order_purchase_timestamp
                    ts.seconds = midnight + (i % days) * 86_400 + ts.seconds % 86_400
        raw = proto.SerializeToString()
        sent.append(Sent(proto, Batch(raw, core.process(raw))))
    return sent


def expected_table(sent: list[Sent], table: str) -> pa.Table:
    """The rows the core produced for `table`, in the order they were sent,
    with the sink's `producer` column (null: these batches had no authenticated caller)."""
    rows = pa.Table.from_batches([s.batch.tables[table] for s in sent])
    return rows.append_column(pa.field("producer", pa.string()), pa.nulls(rows.num_rows, pa.string()))


def read_table(root: str, table: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """`<root>/<table>` read back as a Hive-partitioned dataset (adds year, month, day)."""
    path = f"{root}/{table}"
    return ds.dataset(path, format="parquet", partitioning="hive", filesystem=filesystem).to_table()


def sort_all(table: pa.Table) -> pa.Table:
    """Rows in a canonical order (by every column), so two tables compare as multisets."""
    return table.sort_by([(name, "ascending") for name in table.column_names])


def utc_day(ts: dt.datetime) -> tuple[int, int, int]:
    ts = ts.astimezone(dt.UTC)
    return ts.year, ts.month, ts.day


def assert_round_trip(sent: list[Sent], read: Callable[[str], pa.Table]) -> None:
    """Every table read back (`read(table)`) holds exactly the rows sent, with
    the core's column names and types, each order in the partition of its
    purchase day (computed here with datetime) and each child row in its order's."""
    orders = expected_table(sent, "orders")
    order_day = {
        oid: utc_day(ts)
        for oid, ts in zip(
            orders.column("order_id").to_pylist(), orders.column("order_purchase_timestamp").to_pylist(), strict=True
        )
    }
    assert len(order_day) == orders.num_rows, "the check below needs unique order_ids"
    for table in TABLES:
        want = expected_table(sent, table)
        got = read(table)
        assert got.column_names == want.column_names + PARTITION_COLUMNS
        data = got.drop_columns(PARTITION_COLUMNS)
        assert data.schema == want.schema, table
        assert sort_all(data).equals(sort_all(want)), table
        # Partition of every row: the order's purchase day, as datetime computes it.
        parts = list(zip(*(got.column(c).to_pylist() for c in PARTITION_COLUMNS), strict=True))
        if table == "customers":
            # A customer row has no order_id; it is keyed by the order's customer_id.
            customer_ids = orders.column("customer_id").to_pylist()
            by_customer = dict(zip(customer_ids, orders.column("order_id").to_pylist(), strict=True))
            assert len(by_customer) == orders.num_rows, "customer_id is unique per order, as in Olist"
            order_ids = [by_customer[c] for c in got.column("customer_id").to_pylist()]
        else:
            order_ids = got.column("order_id").to_pylist()
        assert parts == [order_day[o] for o in order_ids], table


def partition_counts(table: pa.Table) -> dict[tuple[int, int, int], int]:
    counts: dict[tuple[int, int, int], int] = {}
    for key in zip(*(table.column(c).to_pylist() for c in PARTITION_COLUMNS), strict=True):
        counts[key] = counts.get(key, 0) + 1
    return counts


def visible_files(root: str) -> list[str]:
    """Every file a reader of `root` could see (no component starting with `.`)."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(directory, f) for f in files if not f.startswith(".")]
    return sorted(found)


def hidden_files(root: str) -> list[str]:
    found = []
    for directory, _, files in os.walk(root):
        found += [os.path.join(directory, f) for f in files if f.startswith(".")]
    return sorted(found)



async def write_all(config: BronzeConfig, sent: list[Sent], *, stop: bool = True, **kwargs: object) -> BronzeSink:
    sink = BronzeSink(config, **kwargs)  # type: ignore[arg-type]
    await sink.start()
    for i, s in enumerate(sent):
        await sink.write(s.batch, token=i)
    if stop:
        await sink.stop()
    return sink


# -- layout and content


def test_every_row_round_trips_into_its_orders_purchase_day_partition(tmp_path):
    sent = generate(4, 500, duplicate_ratio=0.05, invalid_ratio=0.03)
    assert sum(s.batch.result.duplicates for s in sent) > 0 and sum(s.batch.rejected for s in sent) > 0
    root = str(tmp_path / "bronze")
    run(write_all(BronzeConfig(uri=f"file://{root}"), sent))

    assert_round_trip(sent, lambda table: read_table(root, table))
    # Rows per partition equal what the orders' purchase dates say, table by table.
    orders = expected_table(sent, "orders")
    want: dict[tuple[int, int, int], int] = {}
    for ts in orders.column("order_purchase_timestamp").to_pylist():
        want[utc_day(ts)] = want.get(utc_day(ts), 0) + 1
    assert len(want) > 100  # generated purchase dates spread over ~2 years
    assert partition_counts(read_table(root, "orders")) == want
    # ... and the directories are named after them.
    for (y, m, d), rows in want.items():
        directory = os.path.join(root, "orders", f"year={y:04d}", f"month={m:02d}", f"day={d:02d}")
        assert sum(pq.read_metadata(os.path.join(directory, f)).num_rows for f in os.listdir(directory)) == rows
    assert hidden_files(root) == []


def test_quarantine_holds_each_rejected_order_with_its_exact_bytes(tmp_path):
    sent = generate(3, 400, invalid_ratio=0.05, day=DAY, days=3)
    root = str(tmp_path / "bronze")
    run(write_all(BronzeConfig(uri=root), sent))

    got = read_table(root, QUARANTINE)
    assert got.drop_columns(["year", "month", "day"]).schema == QUARANTINE_SCHEMA
    rows = sorted(got.to_pylist(), key=lambda r: (r["batch_id"], r["index"]))
    want = []
    for s in sent:
        received = dt.datetime.fromtimestamp(s.batch.received_ns // 1000 / 1e6, dt.UTC)
        for r in s.batch.rejects.to_pylist():
            original = s.proto.orders[r["index"]]
            want.append(
                {
                    "batch_id": s.proto.batch_id,
                    "source": s.proto.source,
                    "producer": None,
                    "index": r["index"],
                    "event_id": original.event_id,
                    "reason": r["reason"],
                    "message": r["message"],
                    "raw": original.SerializeToString(),
                    "received_at": received,
                    "year": received.year,
                    "month": received.month,
                    "day": received.day,
                }
            )
    assert len(want) == sum(s.batch.rejected for s in sent) > 5
    assert rows == sorted(want, key=lambda r: (r["batch_id"], r["index"]))
    for row in rows:  # the bytes parse back to the order that was sent
        assert ingest_pb2.Order.FromString(row["raw"]).event_id == row["event_id"]
    # A reader of a table never sees the quarantine.
    assert read_table(root, "orders").num_rows == expected_table(sent, "orders").num_rows


def test_partition_path_matches_datetime_for_every_day_of_the_valid_range():
    epoch = dt.date(1970, 1, 1)
    first, end = (dt.date(y, 1, 1).toordinal() - epoch.toordinal() for y in (2000, 2101))
    for day in range(first, end):
        d = epoch + dt.timedelta(days=day)
        assert partition_path("orders", day) == f"orders/year={d.year:04d}/month={d.month:02d}/day={d.day:02d}"


# -- rolling and visibility


def test_files_roll_by_size_and_each_is_complete(tmp_path):
    sent = generate(6, 1000, day=DAY, invalid_ratio=0.0)
    root = str(tmp_path / "bronze")
    roll_bytes = 48 * 1024
    config = BronzeConfig(uri=root, roll_bytes=roll_bytes, row_group_rows=300, roll_age_s=600)
    run(write_all(config, sent))

    assert_round_trip(sent, lambda table: read_table(root, table))
    orders_dir = os.path.join(root, partition_path("orders", (DAY - dt.date(1970, 1, 1)).days))
    files = [os.path.join(orders_dir, f) for f in sorted(os.listdir(orders_dir))]
    sizes = [os.path.getsize(f) for f in files]
    assert len(files) >= 4, sizes
    # Each file stops growing once it reaches roll_bytes: it overshoots by less
    # than one row group and only the last one may be small.
    assert all(size < 2 * roll_bytes for size in sizes), sizes
    assert sum(size >= roll_bytes * 0.5 for size in sizes) >= len(files) - 1, sizes
    assert all(pq.read_metadata(f).num_row_groups >= 1 for f in files)
    assert sum(pq.read_metadata(f).num_rows for f in files) == expected_table(sent, "orders").num_rows


def test_files_roll_by_age_without_flush_or_stop(tmp_path):
    sent = generate(2, 300, day=DAY, days=3)
    root = str(tmp_path / "bronze")

    async def body() -> None:
        sink = await write_all(BronzeConfig(uri=root, roll_age_s=0.2), sent, stop=False)
        deadline = time.monotonic() + 10
        want = expected_table(sent, "orders").num_rows
        while time.monotonic() < deadline:
            if os.path.isdir(os.path.join(root, "orders")) and read_table(root, "orders").num_rows == want:
                break
            await asyncio.sleep(0.05)
        assert read_table(root, "orders").num_rows == want
        assert_round_trip(sent, lambda table: read_table(root, table))
        assert sink.stats()["open_files"] == 0
        await sink.stop()

    run(body())


def test_flush_publishes_everything_and_stop_leaves_no_temp_file(tmp_path):
    sent = generate(3, 300, day=DAY, days=3)
    root = str(tmp_path / "bronze")

    async def body() -> None:
        sink = await write_all(BronzeConfig(uri=root), sent[:2], stop=False)
        assert visible_files(root) == []  # nothing rolled yet (60 s, 128 MiB)
        await sink.flush()
        assert_round_trip(sent[:2], lambda table: read_table(root, table))
        await sink.write(sent[2].batch)
        await sink.stop()

    run(body())
    assert_round_trip(sent, lambda table: read_table(root, table))
    assert hidden_files(root) == []


def test_no_visible_file_is_ever_partial(tmp_path):
    """A reader scanning the directory while files are written and rolled only
    ever finds complete Parquet files."""
    sent = generate(8, 500, day=DAY)
    root = str(tmp_path / "bronze")
    seen: set[str] = set()
    failures: list[str] = []
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            for path in visible_files(root):
                try:
                    pq.read_metadata(path)
                    seen.add(path)
                except FileNotFoundError:
                    pass
                except Exception as exc:
                    failures.append(f"{path}: {exc}")

    scanner = threading.Thread(target=scan)
    scanner.start()
    try:
        config = BronzeConfig(uri=root, roll_bytes=16 * 1024, row_group_rows=100)
        run(write_all(config, sent))
    finally:
        done.set()
        scanner.join()
    assert failures == []
    assert len(seen) > 20
    assert hidden_files(root) == []
    assert_round_trip(sent, lambda table: read_table(root, table))


def test_two_sinks_writing_the_same_partitions_never_share_a_file_name(tmp_path):
    sent_a = generate(2, 300, seed=1, day=DAY)
    sent_b = generate(2, 300, seed=2, day=DAY)
    root = str(tmp_path / "bronze")

    async def body() -> None:
        a = await write_all(BronzeConfig(uri=root), sent_a, stop=False)
        b = await write_all(BronzeConfig(uri=root), sent_b, stop=False)
        await asyncio.gather(a.stop(), b.stop())
        assert a.stats()["files_published"] + b.stats()["files_published"] == len(visible_files(root))

    run(body())
    files = visible_files(root)
    orders_dir = os.path.join(root, partition_path("orders", (DAY - dt.date(1970, 1, 1)).days))
    assert len(os.listdir(orders_dir)) == 2
    names = [os.path.basename(f) for f in files]
    # part-<utc>-<host>-<pid>-<uuid 12 hex>-<seq>.parquet: safe characters only
    pattern = r"part-\d{8}T\d{6}Z-[A-Za-z0-9-]+-\d+-[0-9a-f]{12}-\d{6}\.parquet"
    assert all(re.fullmatch(pattern, n) for n in names), names
    assert sorted(read_table(root, "orders").column("event_id").to_pylist()) == sorted(
        expected_table(sent_a + sent_b, "orders").column("event_id").to_pylist()
    )


# -- durability hook, memory bound


def test_on_durable_reports_each_token_once_its_rows_are_published(tmp_path):
    sent = generate(5, 200, day=DAY, days=3)
    root = str(tmp_path / "bronze")
    durable: list[object] = []

    async def body() -> None:
        sink = await write_all(BronzeConfig(uri=root), sent, stop=False, on_durable=durable.extend)
        await asyncio.sleep(0.1)
        assert durable == []  # buffered, not yet in a file
        await sink.flush()
        await asyncio.sleep(0)  # on_durable runs on the loop, scheduled by the committer
        assert sorted(durable) == list(range(5))
        await sink.write(sent[0].batch, token="again")
        await sink.stop()
        await asyncio.sleep(0)
        assert durable[-1] == "again" and len(durable) == 6

    run(body())


def test_memory_bound_rolls_files_early_and_nothing_is_lost(tmp_path):
    sent = generate(12, 500, day=DAY, days=5)
    root = str(tmp_path / "bronze")
    per_batch = max(BronzeRows.from_batch(s.batch).nbytes for s in sent)
    limit = 3 * per_batch

    async def body() -> None:
        sink = BronzeSink(BronzeConfig(uri=root, max_buffered_bytes=limit))
        await sink.start()
        peak = 0
        for s in sent:
            await sink.write(s.batch)
            peak = max(peak, sink.stats()["buffered_bytes"])
        assert peak <= limit
        # Neither roll_age_s (60 s) nor roll_bytes was reached: only memory rolled these.
        assert visible_files(root) != []
        await sink.stop()

    run(body())
    assert_round_trip(sent, lambda table: read_table(root, table))


# -- failures


def test_local_path_that_cannot_be_a_directory_fails_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def body() -> None:
        with pytest.raises(SinkFailed, match="Not a directory"):
            await BronzeSink(BronzeConfig(uri=str(blocker / "bronze"))).start()

    run(body())


def test_local_write_error_fails_the_sink_loudly(tmp_path, caplog):
    root = tmp_path / "bronze"
    root.mkdir()
    (root / "orders").write_text("a file where the orders directory should be")
    sent = generate(2, 200, day=DAY, days=3)

    async def body() -> None:
        sink = BronzeSink(BronzeConfig(uri=str(root)))
        await sink.start()
        await sink.write(sent[0].batch)
        with pytest.raises(SinkFailed, match="orders/year="):
            await sink.flush()
        with pytest.raises(SinkFailed):
            await sink.write(sent[1].batch)
        assert isinstance(sink.error, SinkFailed)
        with pytest.raises(SinkFailed):
            await sink.stop()

    run(body())
    assert any("rows are NOT in Bronze" in r.message and r.rows_lost > 0 for r in caplog.records)
    # The other tables were written.
    assert read_table(str(root), "order_items").num_rows == sent[0].batch.tables["order_items"].num_rows


def test_write_after_stop_raises_shutting_down(tmp_path):
    async def body() -> None:
        sink = BronzeSink(BronzeConfig(uri=str(tmp_path)))
        await sink.start()
        await sink.stop()
        with pytest.raises(ShuttingDown):
            await sink.write(generate(1, 10)[0].batch)

    run(body())


# -- S3


def s3_config(s3: S3Server, tmp_path, **kwargs: object) -> BronzeConfig:
    defaults: dict[str, object] = dict(
        uri=s3.uri("lake/bronze"),
        s3_endpoint_url=s3.endpoint_url,
        spool_dir=str(tmp_path / "spool"),
        s3_max_attempts=1,
        s3_connect_timeout_s=1.0,
        retry_base_s=0.05,
        retry_max_s=0.2,
        commit_attempts=2,
    )
    defaults.update(kwargs)
    return BronzeConfig(**defaults)  # type: ignore[arg-type]


def read_s3(s3: S3Server, prefix: str = "lake/bronze"):
    fs = s3.filesystem()
    return lambda table: read_table(f"{s3.bucket}/{prefix}", table, filesystem=fs)


def test_s3_round_trip_through_pyarrows_own_s3_client(s3, tmp_path):
    sent = generate(3, 300, day=DAY, days=10)
    run(write_all(s3_config(s3, tmp_path), sent))

    assert_round_trip(sent, read_s3(s3))
    keys = s3.objects()
    assert keys and all(k.startswith("lake/bronze/") and k.endswith(".parquet") for k in keys)
    assert {k.split("/")[2] for k in keys} == {*TABLES, QUARANTINE}
    assert visible_files(str(tmp_path / "spool")) == [] and hidden_files(str(tmp_path / "spool")) == []


def test_s3_large_file_goes_up_in_parts_and_appears_only_complete(s3, tmp_path):
    # One partition, no compression: an orders file of a few MiB, above a
    # multipart threshold lowered to S3's minimum part size.
    sent = generate(40, 1000, day=DAY, invalid_ratio=0.0, duplicate_ratio=0.0)
    config = s3_config(s3, tmp_path, compression="none", multipart_threshold_bytes=5 * 1024 * 1024,
                       multipart_chunk_bytes=5 * 1024 * 1024)  # fmt: skip
    run(write_all(config, sent), timeout_s=60)

    client = s3.client()
    orders = {k: size for k, size in s3.objects("lake/bronze/orders/").items()}
    (key, size), = orders.items()
    assert size > 5 * 1024 * 1024
    assert client.head_object(Bucket=s3.bucket, Key=key)["ETag"].strip('"').endswith("-2")  # 2 parts
    assert client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert_round_trip(sent, read_s3(s3))


def test_s3_outage_is_reported_retried_and_loses_nothing(s3, tmp_path):
    sent = generate(3, 200, day=DAY, days=3)

    async def body() -> None:
        sink = BronzeSink(s3_config(s3, tmp_path))
        await sink.start()
        await sink.write(sent[0].batch)
        await sink.flush()

        s3.stop()
        await sink.write(sent[1].batch)
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="bronze: uploading s3://"):
            await sink.flush()
        assert time.monotonic() - started < 10
        with pytest.raises(SinkUnavailable):  # no batch is taken while uploads fail
            await sink.write(sent[2].batch)
        assert visible_files(str(tmp_path / "spool")) != []  # kept, complete, for the retries

        s3.restart()
        deadline = time.monotonic() + 10
        while sink.error is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sink.error is None
        await sink.write(sent[2].batch)
        await sink.stop()

    run(body())
    assert_round_trip(sent, read_s3(s3))
    assert visible_files(str(tmp_path / "spool")) == []


def test_s3_unreachable_at_stop_keeps_files_and_the_next_start_uploads_them(aws_env, tmp_path):
    sent = generate(2, 200, day=DAY, days=3)
    s3 = start_s3()
    port = s3.port
    s3.stop()  # nothing listens on the endpoint now

    async def unreachable() -> None:
        sink = BronzeSink(s3_config(s3, tmp_path, stop_timeout_s=0.5))
        await sink.start()  # an outage at start is not a reason to refuse to start
        for s in sent:
            await sink.write(s.batch)
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="kept for the next start"):
            await sink.stop()
        assert time.monotonic() - started < 5

    run(unreachable())
    kept = visible_files(str(tmp_path / "spool"))
    assert len(kept) == 4 * 3 + 1  # 4 tables x 3 days, quarantine x 1
    assert all(pq.read_metadata(p).num_rows > 0 for p in kept)

    s3.restart()
    assert s3.port == port

    async def restarted() -> None:
        sink = BronzeSink(s3_config(s3, tmp_path))
        await sink.start()
        await sink.stop()

    try:
        run(restarted())
        assert_round_trip(sent, read_s3(s3))
        assert visible_files(str(tmp_path / "spool")) == []
    finally:
        s3.stop()


def test_s3_missing_bucket_fails_start_as_permanent(s3, tmp_path):
    async def body() -> None:
        config = s3_config(s3, tmp_path, uri=f"s3://{s3.bucket}-missing/bronze")
        with pytest.raises(SinkFailed, match="S3 NoSuchBucket"):
            await BronzeSink(config).start()

    run(body())


def test_metrics_count_files_bytes_and_rows_per_table(tmp_path):
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()

    class Metrics:
        bronze_files_total = Counter("bronze_files_total", "", ["table"], registry=registry)
        bronze_bytes_total = Counter("bronze_bytes_total", "", ["table"], registry=registry)
        bronze_rows_total = Counter("bronze_rows_total", "", ["table"], registry=registry)

    sent = generate(2, 300, day=DAY, days=3)
    root = str(tmp_path / "bronze")
    run(write_all(BronzeConfig(uri=root), sent, metrics=Metrics()))

    for table in (*TABLES, QUARANTINE):
        files = visible_files(os.path.join(root, table))
        assert registry.get_sample_value("bronze_files_total", {"table": table}) == len(files)
        assert registry.get_sample_value("bronze_bytes_total", {"table": table}) == sum(map(os.path.getsize, files))
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        assert registry.get_sample_value("bronze_rows_total", {"table": table}) == rows
    assert rows == sum(s.batch.rejected for s in sent)  # the last table is the quarantine


def test_bronze_rows_refuse_days_or_columns_that_do_not_match():
    s = generate(1, 20)[0]
    orders = BronzeRows.from_batch(s.batch).tables["orders"]  # the core's columns and `producer`
    with pytest.raises(ValueError, match="schema"):
        BronzeRows({"orders": s.batch.orders}, {"orders": np.zeros(orders.num_rows, np.int32)})
    with pytest.raises(ValueError, match="partition days"):
        BronzeRows({"orders": orders}, {"orders": np.zeros(1, np.int32)})
    with pytest.raises(ValueError, match="schema"):
        BronzeRows({"orders": orders.drop_columns(["source"])}, {"orders": np.zeros(orders.num_rows, np.int32)})
    with pytest.raises(ValueError, match="destination"):
        BronzeRows({"sellers": orders}, {"sellers": np.zeros(orders.num_rows, np.int32)})


def test_a_dead_writer_fails_pending_and_later_calls_instead_of_hanging(tmp_path, monkeypatch):
    """Fault injection into our own writer (a bug), not a fake of anything external."""

    def bug(self, dest):
        raise RuntimeError("injected")

    monkeypatch.setattr(bronze._Writer, "_distribute", bug)
    sent = generate(2, 50, day=DAY)

    async def body() -> None:
        sink = BronzeSink(BronzeConfig(uri=str(tmp_path)))
        await sink.start()
        await sink.write(sent[0].batch)
        with pytest.raises(SinkFailed, match="writer stopped after an internal error .RuntimeError: injected"):
            await sink.flush()
        with pytest.raises(SinkFailed):
            await sink.write(sent[1].batch)
        with pytest.raises(SinkFailed):
            await sink.stop()

    run(body(), timeout_s=10)

    async def dies_during_stop() -> None:
        sink = BronzeSink(BronzeConfig(uri=str(tmp_path)))
        await sink.start()
        await sink.write(sent[0].batch)
        started = time.monotonic()
        with pytest.raises(SinkFailed, match="injected"):
            await sink.stop()
        assert time.monotonic() - started < 2  # not the 30 s stop deadline

    run(dies_during_stop(), timeout_s=10)
