"""The benchmark's load client, run by the harness as a process of its own.

    python -m benchmarks.driver --target 127.0.0.1:50051 --batch-size 1000 --streams 4 \\
        --duration 10 --warmup 2 --rate 0 --namespace 1 --out result.json

Each stream is one `AsyncIngestClient` (the client library: one connection,
`--max-in-flight` batches unacked) sending batches assembled from the cached
order pool (benchmarks/corpus.py) with no per-order Python. `--rate` 0 sends as
fast as acks allow (closed loop: the server's maximum sustainable rate with that
much in flight); a rate sends on an open-loop schedule spread over the streams,
so latency includes any queueing when the server falls behind.

Measured: acked orders and batches per second over the whole run (first send
to last ack; also `window_orders_per_s`, acks inside the window after
`--warmup`), the ack latency of every batch sent in that window (send call to
ack), and the totals (for CPU per order).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
from keystone_ingest.client.client import AsyncIngestClient

from benchmarks.corpus import BatchMaker, load_pool


class Recorder:
    def __init__(self, window_start: float, window_end: float) -> None:
        self.window_start, self.window_end = window_start, window_end
        self.latencies_s: list[float] = []
        self.sent_at_s: list[float] = []  # beside latencies_s: when each batch left, for finding stalls
        self.window_orders = self.window_batches = 0
        self.total_orders = self.total_batches = 0
        self.errors: dict[str, int] = {}
        self.error_examples: dict[str, str] = {}
        self.accepted = self.duplicates = self.rejected = 0
        self.last_ack = 0.0

    def done(self, sent_at: float, orders: int, future: asyncio.Future) -> None:
        now = time.perf_counter()
        if future.cancelled() or future.exception() is not None:
            name = "CANCELLED" if future.cancelled() else type(future.exception()).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
            self.error_examples.setdefault(name, "cancelled" if future.cancelled() else str(future.exception()))
            return
        ack = future.result()
        self.last_ack = now
        self.total_orders += orders
        self.total_batches += 1
        self.accepted += ack.accepted
        self.duplicates += ack.duplicates
        self.rejected += ack.rejected
        if self.window_start <= now <= self.window_end:
            self.window_orders += orders
            self.window_batches += 1
        if self.window_start <= sent_at <= self.window_end:
            self.latencies_s.append(now - sent_at)
            self.sent_at_s.append(sent_at - self.window_start)


async def run(args: argparse.Namespace) -> dict:
    pool = load_pool(
        args.pool_orders,
        seed=args.seed,
        duplicate_ratio=args.duplicate_ratio,
        invalid_ratio=args.invalid_ratio,
        live=not args.olist_days,
    )
    maker = BatchMaker(pool, args.batch_size)
    started = time.perf_counter()
    end = started + args.warmup + args.duration
    recorder = Recorder(started + args.warmup, end)
    per_stream_rate = args.rate / args.streams if args.rate > 0 else 0.0

    async def stream(index: int) -> None:
        batches = maker.batches(args.namespace * 64 + index)
        sent_orders = 0
        # Streams start their schedules a fraction of a batch interval apart, as
        # independent senders would; in step, every stream's batch would arrive
        # at the same instant and wait for the others'.
        phase_s = index / args.streams * args.batch_size / per_stream_rate if per_stream_rate else 0.0
        async with AsyncIngestClient(
            args.target, max_in_flight=args.max_in_flight, channel_options=[("grpc.use_local_subchannel_pool", 1)]
        ) as client:
            while (now := time.perf_counter()) < end:
                if per_stream_rate:
                    due = started + phase_s + sent_orders / per_stream_rate
                    if due >= end:
                        break
                    if due > now:
                        await asyncio.sleep(due - now)
                batch_id, payload, orders = next(batches)
                sent_at = time.perf_counter()
                future = await client.send(payload, batch_id=batch_id)
                future.add_done_callback(functools.partial(recorder.done, sent_at, orders))
                sent_orders += orders
            await client.flush()

    await asyncio.gather(*(stream(i) for i in range(args.streams)))
    await asyncio.sleep(0)
    finished = time.perf_counter()
    window_s = args.duration
    lat_ms = np.sort(np.array(recorder.latencies_s) * 1000)
    pct = (lambda q: float(np.percentile(lat_ms, q))) if len(lat_ms) else (lambda q: float("nan"))
    # The slowest 1% with when they were sent (seconds into the window): stalls show as clusters.
    raw_ms = np.array(recorder.latencies_s) * 1000
    slowest = np.argsort(raw_ms)[::-1][: max(1, len(raw_ms) // 100)]
    sample = lat_ms if len(lat_ms) <= 20_000 else lat_ms[np.linspace(0, len(lat_ms) - 1, 20_000).astype(int)]
    return {
        "target": args.target,
        "batch_size": args.batch_size,
        "streams": args.streams,
        "max_in_flight": args.max_in_flight,
        "rate": args.rate,
        "warmup_s": args.warmup,
        "window_s": window_s,
        "run_s": finished - started,
        # Every acked order over the time from the first send to the last ack.
        # Acks counted only inside the window would undercount a server whose
        # latency exceeds the window (all its in-flight batches progress
        # together and finish late), as the reference does with many streams.
        "orders_per_s": recorder.total_orders / max(recorder.last_ack - started, 1e-9),
        "batches_per_s": recorder.total_batches / max(recorder.last_ack - started, 1e-9),
        "window_orders_per_s": recorder.window_orders / window_s,
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": float(lat_ms[-1]) if len(lat_ms) else float("nan"),
            "mean": float(lat_ms.mean()) if len(lat_ms) else float("nan"),
        },
        "latency_sample_ms": [round(float(v), 3) for v in sample],
        "slowest": [[round(recorder.sent_at_s[i], 3), round(float(raw_ms[i]), 1)] for i in slowest],
        "total_orders": recorder.total_orders,
        "total_batches": recorder.total_batches,
        "accepted": recorder.accepted,
        "duplicates": recorder.duplicates,
        "rejected": recorder.rejected,
        "errors": recorder.errors,
        "error_examples": recorder.error_examples,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.driver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", required=True)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--max-in-flight", type=int, default=8, help="unacked batches per stream")
    p.add_argument("--rate", type=float, default=0.0, help="orders/s over all streams; 0 = as fast as acks allow")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds, after the warm-up")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--namespace", type=int, default=0, help="0..63: keeps the event_ids of runs apart")
    p.add_argument("--pool-orders", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--duplicate-ratio", type=float, default=0.01)
    p.add_argument("--invalid-ratio", type=float, default=0.005)
    p.add_argument("--olist-days", action="store_true", help="keep the generator's 2016-2018 purchase days")
    p.add_argument("--out", help="write the result JSON here (default: stdout)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
