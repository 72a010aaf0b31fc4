"""`make demo`: the main job end to end, on one machine, in about a minute.

1. start `keystone-ingest serve` with its embedded Apache Kafka broker (data in
   data/demo/kafka) and Bronze on local disk (data/demo/bronze);
2. stream 200,000 synthetic Olist-shaped orders into it with the load client
   (1% duplicates, 0.5% invalid) and print the load summary;
3. count what landed in Kafka with an independent consumer;
4. wait for the Bronze worker `serve` runs to write everything Kafka holds,
   then stop the server with SIGTERM;
5. query the Bronze Parquet and print files and rows per table;
6. check the three agree, and exit 0 only if they do.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from keystone_ingest.client.load import LoadOptions, run_load
from keystone_ingest.core import TABLES
from keystone_ingest.dev.catchup import wait_bronze_caught_up
from keystone_ingest.dev.launcher import ServerProcess


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> tuple[int, list[bytes]]:
    """How many records were ever appended to `topic` (the sum of its high
    watermarks), and the event_id header of every record the topic still holds
    (all of them on Kafka, whose retention is days; a broker that dropped old
    records would show fewer)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keystone-demo", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s) for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, (low, high) in marks.items() if high > low])
        remaining = {p for p, (low, high) in marks.items() if high > low}
        ids: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error():
                    raise RuntimeError(message.error())
                # The server gives every record an event_id header; a consumed record has an offset.
                event_id, offset = dict(message.headers() or ())["event_id"], message.offset()
                assert isinstance(event_id, bytes) and offset is not None
                ids.append(event_id)
                if offset >= marks[message.partition()][1] - 1:
                    remaining.discard(message.partition())
        if remaining:
            raise TimeoutError(f"partitions {sorted(remaining)} of {topic} not read in {timeout_s} s")
        return sum(high for _, high in marks.values()), ids
    finally:
        consumer.close()


def bronze_report(root: Path) -> dict[str, tuple[int, int, int]]:
    """files, rows and partitions (days) per Bronze table, plus the quarantine."""
    report = {}
    for table in (*TABLES, "_quarantine"):
        dataset = ds.dataset(root / table, format="parquet", partitioning="hive")
        days = {Path(f).parent for f in dataset.files}
        report[table] = (len(dataset.files), dataset.count_rows(), len(days))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--data-dir", default="data/demo")
    args = parser.parse_args(argv)

    data = Path(args.data_dir).resolve()
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    bronze = data / "bronze"
    print(
        f"== starting keystone-ingest serve (embedded Apache Kafka in {data / 'kafka'}, Bronze in {bronze}); "
        f"log: {data / 'server.log'}"
    )
    server = ServerProcess(
        # Bronze files every 2 s (default 60 s) so the demo does not wait for them.
        [
            "--bronze-uri",
            f"file://{bronze}",
            "--roll-age-s",
            "2",
            "--dev-kafka-dir",
            str(data / "kafka"),
            "--log-format",
            "json",
        ],
        env={"KEYSTONE_KAFKA_BOOTSTRAP": ""},
        log_path=data / "server.log",
    )
    try:
        print(
            f"   gRPC {server.target}, metrics http://127.0.0.1:{server.metrics_port}/metrics, "
            f"Kafka (embedded Apache Kafka) {server.kafka_bootstrap}\n"
        )
        print(
            f"== streaming {args.orders:,} orders: {args.streams} streams, {args.batch_size} orders per batch, "
            "1% duplicates, 0.5% invalid"
        )
        summary = run_load(
            LoadOptions(
                target=server.target,
                count=args.orders,
                batch_size=args.batch_size,
                streams=args.streams,
                seed=2016,
                duplicate_ratio=0.01,
                invalid_ratio=0.005,
                source="make-demo",
                progress=sys.stderr.isatty(),
            )
        )
        print(summary.format_text())

        # Counted from the offsets the broker assigned, then read back record
        # by record: the two agree only if Kafka retained every record.
        appended, kafka_ids = read_topic(server.kafka_bootstrap, "orders")
        dlq_appended, dlq_ids = read_topic(server.kafka_bootstrap, "orders.dlq")
        print("\n== Kafka (independent consumer)")
        print(
            f"   topic orders:     {appended:>9,} records appended, {len(kafka_ids):,} retained and read back, "
            f"{len(set(kafka_ids)):,} distinct event_ids among them"
        )
        print(f"   topic orders.dlq: {dlq_appended:>9,} records appended, {len(dlq_ids):,} retained and read back")

        started = time.monotonic()
        wait_bronze_caught_up(server.kafka_bootstrap, ["orders", "orders.dlq"], f"file://{bronze}", timeout_s=300)
        print(f"\n== the Bronze worker caught up with Kafka {time.monotonic() - started:.1f} s after the last ack")
        print("\n== stopping the server (SIGTERM): drain, flush Kafka, stop the Bronze worker")
        code = server.stop()
        print(f"   exit code {code}")
    finally:
        server.close()

    report = bronze_report(bronze)
    print(f"\n== Bronze Parquet under {bronze}")
    print(f"   {'table':<16}{'files':>7}{'rows':>11}{'days':>7}")
    for table, (files, rows, days) in report.items():
        print(f"   {table:<16}{files:>7,}{rows:>11,}{days:>7,}")
    orders = ds.dataset(bronze / "orders", format="parquet", partitioning="hive").to_table(columns=["event_id"])
    bronze_distinct = pc.count_distinct(orders["event_id"]).as_py()

    checks = {
        "server exited 0": code == 0,
        "every batch acked": not summary.errors and summary.statuses.get("ACCEPTED", 0) == summary.batches,
        "Kafka got one record per accepted order": appended == summary.accepted
        and len(kafka_ids) == len(set(kafka_ids)),
        "Kafka retained every record": len(kafka_ids) == appended and len(dlq_ids) == dlq_appended,
        "Bronze holds each accepted order once": report["orders"][1] == bronze_distinct == summary.accepted,
        "rejected orders in the DLQ and quarantine": dlq_appended == report["_quarantine"][1] == summary.rejected,
    }
    print("\n== checks")
    for name, ok in checks.items():
        print(f"   [{'ok' if ok else 'FAILED'}] {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
