"""Where the real server's CPU goes per order, measured with py-spy under load
(the server and its Bronze worker process together).

    python -m benchmarks.profile [--seconds 10] [--streams 4] [--batch-size 1000] [--native]

Starts one Apache Kafka node and `keystone-ingest serve`, drives it at full speed with
the load driver, and meanwhile samples the server with `py-spy record`
(every thread, idle ones excluded: a sample is a thread on a CPU or holding
the GIL). Each sample is put in one stage by the first rule below that matches
its stack (leaf first), and a stage's cost per order is its share of the
samples times the server's CPU seconds per acked order over the same time:

    cost(stage) = samples(stage) / samples(all) * cpu_s / orders

It prints the breakdown, and writes it with the raw collapsed stacks to
`--out-dir` (profile.json, profile-stacks.txt). With `--native` py-spy also
unwinds C/C++ frames (zstd, Parquet, the core), which costs more per sample but
splits the native work finely.

Shares are of samples, not of exact CPU time: py-spy samples at a fixed rate
(`--rate`) and a thread waiting on a lock inside a C function may count as
active. The figures are good to a few tenths of a microsecond.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keystone_ingest.dev.kafka import KafkaCluster
from keystone_ingest.dev.launcher import ServerProcess

from benchmarks.corpus import load_pool
from benchmarks.processes import REPO_ROOT, usage

# (stage, substrings any of which in a frame puts the sample in the stage);
# frames are checked from the leaf up, and the first frame that matches a rule decides.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("compression of the Kafka record batches (worker thread)", ("compress_record_batch", "ZSTD", "zstd", "cramjam")),
    # The core runs on the server's thread pool with the GIL released: without
    # --native its frames end in the pool's call of it (thread.py:58).
    (
        "native core: decode, validate, dedup, encode",
        ("Core.process", "process_batch", "keystone::", "_core.", "_WorkItem.run (concurrent/futures/thread.py:58)"),
    ),
    ("Parquet encoding (Bronze writer)", ("parquet", "Parquet", "ParquetWriter", "write_table")),
    (
        "Kafka record batches: records encoded by the core from the request",
        ("_append_orders", "_append_rejects", "RecordBatchBuilder"),
    ),
    ("Kafka sink: lanes, hand-over, delivery", ("sinks/kafka/",)),
    ("aiokafka: sender, Produce requests, network", ("aiokafka",)),
    (
        "Bronze worker: fetch, native decode, gather, commit",
        ("server/bronze/", "bronze_decode", "decode_order_records", "decode_reject_records"),
    ),
    ("Arrow import (pyarrow record batches)", ("batch.py", "record_batch")),
    ("gRPC: receive, send acks, stream handling", ("grpc", "service.py", "_cygrpc", "cygrpc")),
    ("pipeline, batch_id window, acks, metrics", ("pipeline.py", "idempotency.py", "metrics.py", "prometheus")),
    ("asyncio event loop", ("asyncio", "base_events", "selectors", "epoll")),
]
OTHER = "other"
# A thread blocked in one of these is waiting (for the GIL, a lock, a queue,
# the network), not working, however py-spy counted it: left out of the shares.
WAITING = "(waiting: GIL, locks, queues, poll)"
_WAIT_LEAVES = (
    "acquire_lock",
    "pthread_cond",
    "sem_wait",
    "sem_timedwait",
    "SimpleQueue_get",
    "epoll_wait",
    "futex",
    "select (selectors.py)",
    "wait (threading.py)",
    "_worker (concurrent/futures/thread.py:81)",
)


def _waiting(frames: list[str]) -> bool:
    if any(w in frames[-1] for w in _WAIT_LEAVES):
        return True
    # With --native the blocking call sits under a few libc frames.
    return "libc" in frames[-1] and any(w in f for f in frames[-4:] for w in _WAIT_LEAVES)


def classify(frames: list[str]) -> str:
    if _waiting(frames):
        return WAITING
    for frame in reversed(frames):  # leaf first
        for stage, needles in RULES:
            if any(n in frame for n in needles):
                return stage
    return OTHER


def parse_raw(path: Path) -> collections.Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) format: `frame;frame;...;leaf count` per line, root first."""
    stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def breakdown(stacks: collections.Counter, cpu_s: float, orders: int) -> list[dict]:
    per_stage: collections.Counter[str] = collections.Counter()
    for frames, count in stacks.items():
        per_stage[classify(list(frames))] += count
    per_stage.pop(WAITING, None)
    total = sum(per_stage.values()) or 1
    us_per_order = cpu_s / max(orders, 1) * 1e6
    return [
        {"stage": stage, "samples": n, "share": n / total, "us_per_order": n / total * us_per_order}
        for stage, n in per_stage.most_common()
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="how long to sample (after a 2 s warm-up)")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--max-in-flight", type=int, default=8)
    p.add_argument("--rate", type=int, default=97, help="py-spy samples per second (a prime avoids aliasing)")
    p.add_argument("--native", action="store_true", help="unwind C/C++ frames too")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for keystone-ingest serve")
    p.add_argument("--out-dir", default="build/bench")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load_pool()
    py_spy = Path(sys.executable).with_name("py-spy")
    with tempfile.TemporaryDirectory(prefix="keystone-profile-") as tmp, KafkaCluster(nodes=1) as broker:
        broker.create_topic("orders", partitions=6)
        broker.create_topic("orders.dlq", partitions=3)
        server = ServerProcess(
            [
                "--kafka-bootstrap",
                broker.bootstrap,
                "--bronze-uri",
                f"file://{tmp}/bronze",
                "--log-level",
                "warning",
                *args.server_arg,
            ]
        )
        try:
            warmup = 2.0
            result_path = Path(tmp) / "driver.json"
            driver = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.driver",
                    "--target",
                    server.target,
                    "--streams",
                    str(args.streams),
                    "--batch-size",
                    str(args.batch_size),
                    "--max-in-flight",
                    str(args.max_in_flight),
                    "--duration",
                    str(args.seconds),
                    "--warmup",
                    str(warmup),
                    "--out",
                    str(result_path),
                ],
                cwd=REPO_ROOT,
            )
            time.sleep(warmup)
            raw = out_dir / "profile-stacks.txt"
            pids = [server.process.pid, *([server.bronze_pid] if server.bronze_pid else [])]
            before = sum(usage(p).cpu_s for p in pids)
            acked_before = _acked(server)
            spy = subprocess.run(
                [
                    str(py_spy),
                    "record",
                    "-p",
                    str(server.process.pid),
                    "-d",
                    str(int(args.seconds)),
                    "-r",
                    str(args.rate),
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "--subprocesses",
                    # native unwinding needs the process paused for each sample
                    *(["--native"] if args.native else ["--nonblocking"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if spy.returncode != 0:
                # Typically no ptrace permission (containers without CAP_SYS_PTRACE).
                driver.kill()
                print(f"py-spy could not sample the server, so no profile: {spy.stderr.strip()[-500:]}")
                return 0
            after = sum(usage(p).cpu_s for p in pids)
            acked = _acked(server) - acked_before
            driver.wait()
            run = json.loads(result_path.read_text())
        finally:
            server.close()
    rows = breakdown(parse_raw(raw), after - before, acked)
    cpu_per_order_us = (after - before) / max(acked, 1) * 1e6
    print(
        f"server: {acked:,} orders in {args.seconds:g} s sampled ({acked / args.seconds:,.0f} orders/s), "
        f"{cpu_per_order_us:.2f} µs of CPU per order; load driver: {run['orders_per_s']:,.0f} orders/s"
    )
    print(f"{'stage':<64}{'share':>7}{'µs/order':>10}")
    for r in rows:
        print(f"{r['stage']:<64}{r['share'] * 100:>6.1f}%{r['us_per_order']:>10.2f}")
    (out_dir / "profile.json").write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": vars(args),
                "orders": acked,
                "cpu_s": after - before,
                "cpu_us_per_order": cpu_per_order_us,
                "stages": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"written: {out_dir / 'profile.json'}, {raw}")
    return 0


def _acked(server: ServerProcess) -> int:
    """Orders the server has acked so far (accepted + duplicates + rejected), from its metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("keystone_ingest_orders_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


if __name__ == "__main__":
    sys.exit(main())
