"""Helpers of the Bronze worker tests: publish through the real Kafka sink, run
workers, read Bronze back, and the rows Bronze must hold."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import TABLES, Core
from keystone_ingest.dev.catchup import end_offsets
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.bronze.config import BronzeWorkerConfig
from keystone_ingest.server.bronze.layout import QUARANTINE, SCHEMAS
from keystone_ingest.server.bronze.worker import BronzeWorker
from keystone_ingest.server.sinks.kafka import KafkaConfig, KafkaSink
from waiting import wait_until_async


def make_batches(
    count: int, orders: int = 200, *, seed: int = 1, invalid_ratio: float = 0.05, spread_days: bool = False
) -> list[Batch]:
    core = Core()
    generator = OrderGenerator(seed=seed, invalid_ratio=invalid_ratio)
    batches = []
    for _ in range(count):
        message = generator.batch(orders)
        if spread_days:  # purchase days over two years, like a backfill of the Olist files
            for k, order in enumerate(message.orders):
                order.order_purchase_timestamp.seconds -= (k * 7919 % 700) * 86_400
        raw = message.SerializeToString()
        batches.append(Batch(raw, core.process(raw)))
    return batches


async def publish(bootstrap: str, topic: str, dlq: str, batches: list[Batch]) -> None:
    sink = KafkaSink(KafkaConfig(bootstrap=bootstrap, topic=topic, dlq_topic=dlq, create_topics=False))
    await sink.start()
    try:
        for batch in batches:
            await sink.publish(batch)
    finally:
        await sink.stop()


def worker_config(bootstrap: str, topic: str, dlq: str, bronze: str, **overrides) -> BronzeWorkerConfig:
    return BronzeWorkerConfig(
        **{
            "kafka_bootstrap": bootstrap,
            "topic": topic,
            "dlq_topic": dlq,
            "bronze_uri": bronze,
            "bronze_group": f"bronze-{topic}",
            "roll_age_s": 0.2,
            "bronze_session_timeout_s": 2.0,
            **overrides,
        }
    )


async def caught_up(worker: BronzeWorker, timeout_s: float = 60.0, *, committed: bool = True) -> None:
    """Until Bronze ends where Kafka ends now for every partition of the
    worker's topics (end offsets asked of the brokers, not the worker's last
    fetch, which may predate the latest records); with `committed=False`,
    until the worker has consumed that far (its files may still be open)."""
    c = worker.config
    ends = await asyncio.to_thread(end_offsets, c.kafka_bootstrap, [c.topic, c.dlq_topic])
    upto = "committed" if committed else "position"

    def reached() -> bool:
        if worker.error is not None:
            raise worker.error
        status = worker.status()
        return all(status.get(f"{topic}/{p}", {}).get(upto, -1) >= end for (topic, p), end in ends.items())

    await wait_until_async(reached, timeout_s, what=lambda: f"{upto} at Kafka's ends {ends}: {worker.status()}")


async def run_worker_until_caught_up(config: BronzeWorkerConfig) -> dict:
    worker = BronzeWorker(config)
    await worker.start()
    try:
        await worker.wait_joined()
        await caught_up(worker)
        return worker.status()
    finally:
        await worker.stop()


def read_bronze(root: Path, filesystem=None) -> dict[str, pa.Table]:
    out = {}
    for dest in (*TABLES, QUARANTINE):
        path = f"{root}/{dest}"
        try:
            out[dest] = ds.dataset(
                path,
                format="parquet",
                partitioning="hive",
                filesystem=filesystem,
                schema=SCHEMAS[dest]
                .append(pa.field("year", pa.int32()))
                .append(pa.field("month", pa.int32()))
                .append(pa.field("day", pa.int32())),
            ).to_table()
        except FileNotFoundError:
            out[dest] = SCHEMAS[dest].empty_table()
    return out


def expected_rows(batches: list[Batch]) -> dict[str, collections.Counter]:
    """Bronze's rows, as a multiset per table, for these batches each published once."""
    rows: dict[str, collections.Counter] = {t: collections.Counter() for t in (*TABLES, QUARANTINE)}
    for batch in batches:
        for table in TABLES:
            for row in batch.tables[table].to_pylist():
                rows[table][_key({**row, "producer": None})] += 1
        for e in batch.result.errors():
            rows[QUARANTINE][(batch.batch_id, e.index, e.reason)] += 1
    return rows


def bronze_rows(tables: dict[str, pa.Table]) -> dict[str, collections.Counter]:
    rows: dict[str, collections.Counter] = {}
    for table in TABLES:
        names = SCHEMAS[table].names
        rows[table] = collections.Counter(_key(r) for r in tables[table].select(names).to_pylist())
    q = tables[QUARANTINE]
    rows[QUARANTINE] = collections.Counter(
        zip(q["batch_id"].to_pylist(), q["index"].to_pylist(), q["reason"].to_pylist(), strict=True)
    )
    return rows


def _key(row: dict) -> tuple:
    return tuple(sorted(row.items()))
