"""The Kafka ceiling: how many orders/s this broker takes from the server's
Kafka stage alone, run by the harness in the same run as the servers.

    python -m benchmarks.ceiling --bootstrap 127.0.0.1:9092 --topic t --partitions 6 \\
        --duration 8 --warmup 2 --out result.json

The same orders the load driver sends (benchmarks/corpus.py), processed by the
native core before timing; then, timed, what the server's Kafka sink does and
nothing else: per partition, zstd-1 record batches built by the core from the
requests (RecordBatchBuilder, up to 512 KiB, compressed in a worker thread)
and handed to one idempotent acks=all aiokafka producer with send_batch. No
gRPC, no dedup, no Bronze. Reported: orders acked per second inside the window
after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from keystone_ingest.core import Core, RecordBatchBuilder

from benchmarks.corpus import BatchMaker, load_pool

RECORD_BATCH_BYTES = 512 * 1024  # the sink's default --max-batch-bytes
HEADERS = [
    ("batch_id", b"ceiling"),
    ("source", b"bench"),
    ("content-type", b"application/x-protobuf; messageType=keystone.ingest.v1.Order"),
]


async def run(args: argparse.Namespace) -> dict:
    maker = BatchMaker(load_pool(args.pool_orders), args.batch_size)
    core = Core(dedup_max_keys=1)  # the orders are processed once, before timing
    batches = maker.batches(namespace=4095)
    requests = [next(batches)[1] for _ in range(64)]
    results = [(raw, core.process(raw)) for raw in requests]
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=None,
        linger_ms=0,
        max_batch_size=RECORD_BATCH_BYTES,
    )
    await producer.start()
    started = time.perf_counter()
    window = (started + args.warmup, started + args.warmup + args.duration)
    counted = {"orders": 0, "errors": 0}

    def acked(orders: int, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            counted["errors"] += 1
        elif window[0] <= time.perf_counter() <= window[1]:
            counted["orders"] += orders

    async def lane(partition: int) -> None:
        k, start = partition, 0
        while time.perf_counter() < window[1]:
            builder = RecordBatchBuilder("zstd", 1, RECORD_BATCH_BYTES)
            while True:
                raw, result = results[k % len(results)]
                start = builder.append_orders(
                    result, raw, partition, args.partitions, start, 1_700_000_000_000, HEADERS
                )
                if start < result.accepted:
                    break  # full: the rest of this request goes into the next record batch
                k, start = k + 1, 0
            await asyncio.to_thread(builder.close)
            delivered = await producer.send_batch(builder, args.topic, partition=partition)
            delivered.add_done_callback(functools.partial(acked, builder.record_count()))

    try:
        await asyncio.gather(*(lane(p) for p in range(args.partitions)))
        await producer.flush()
    finally:
        await producer.stop()
    return {
        "orders_per_s": counted["orders"] / args.duration,
        "window_s": args.duration,
        "errors": counted["errors"],
        "batch_bytes": RECORD_BATCH_BYTES,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=1000, help="orders per request the records come from")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--pool-orders", type=int, default=100_000)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
