"""`keystone-ingest replay` (the command, a process) into a real server (in
this process): Olist CSV rows come out as Kafka records and Bronze rows under
the Olist column names."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pyarrow.dataset as ds
from kafkautil import read_all
from keystone_ingest.proto.v1 import ingest_pb2
from olistutil import A, B, C, write_olist


def test_replayed_olist_orders_land_in_kafka_and_in_bronze_with_olist_columns(in_process, tmp_path):
    d = in_process()
    olist = write_olist(tmp_path)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "keystone_ingest.server.cli",
            "replay",
            "--olist-dir",
            str(olist),
            "--target",
            d.target,
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Three orders of the files cannot be expressed (an unknown status, 30 February,
    # a fraction of a cent): skipped with a warning; everything sent was acked.
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert (summary["accepted"], summary["rejected"]) == (3, 0)

    records = read_all(d.cluster.bootstrap, d.topic)
    assert sorted(r.key.decode() for r in records) == sorted([A, B, C])
    for r in records:
        order = ingest_pb2.Order.FromString(r.value)
        assert r.header("event_id").decode() == order.event_id == f"olist:{order.order_id}"
        assert r.header("source") == b"olist-replay"

    d.stop()
    bronze = tmp_path / "bronze"
    d.catch_up_bronze(bronze)
    items = ds.dataset(bronze / "order_items", format="parquet", partitioning="hive").to_table()
    a_items = sorted(
        (r["order_item_id"], r["price"], r["freight_value"]) for r in items.to_pylist() if r["order_id"] == A
    )
    assert a_items == [(1, Decimal("29.99"), Decimal("8.72")), (2, Decimal("29.99"), Decimal("8.72"))]
    orders = ds.dataset(bronze / "orders", format="parquet", partitioning="hive").to_table()
    assert {r["order_id"]: r["order_status"] for r in orders.to_pylist()} == {
        A: "delivered",
        B: "invoiced",
        C: "canceled",
    }
