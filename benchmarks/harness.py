"""The end-to-end benchmark: `make bench` (or `python -m benchmarks.harness`).

Starts the broker (one Apache Kafka node by default, as `keystone-ingest serve`
embeds it; `--broker mock` for librdkafka's mock cluster), then for each
server a process with topics and a Bronze directory of its own, and drives it
with the load client (benchmarks/driver.py), one process per run. The servers:

  real       `keystone-ingest serve` as it runs by default: ingest, and its
             Bronze worker in a child process writing Parquet from the topics
  ingest     `keystone-ingest serve --bronze-uri ''`: the ack path alone
  reference  the pure-Python reference (benchmarks/reference/server.py)

The runs:

  0. the Kafka ceiling (benchmarks/ceiling.py): the server's record batches
     through aiokafka's send_batch and nothing else, `--repeats` runs, median;
     the real server's maximum is reported as a share of it;
  1. maximum sustainable rate: as fast as acks allow, `--repeats` runs, median;
  2. fixed fractions of that rate (`--fractions`), open loop: ack latency under
     a load the server keeps up with;
  3. for `real`, `--sustained` seconds at full speed, then how long its Bronze
     worker takes to hold everything Kafka holds (its lag, bounded or not);
  4. sweeps at full speed: batch size (`--batch-sizes`) and concurrent streams
     (`--streams-sweep`);
  5. for `ingest`, 1, 2, 3 replicas (`--replicas-sweep`) on the same topics,
     the driver's streams spread evenly over them: what scaling out
     costs and gives on this one machine (CPU and RSS summed over replicas).

Per run: orders/s and batches/s (acked in the measured window), ack latency
(p50/p90/p99/max of the batches sent in the window), server CPU seconds per
million orders (user + system of the server process over the whole run,
warm-up included, divided by the orders acked in it; its Bronze worker's, the
broker's and the load driver's the same way) and the server's peak RSS
(VmHWM, reset before each run). Results go to `--out-dir` as results.json, and
as PNG plots when matplotlib is installed (throughput against batch size and
against streams, the ack-latency distribution of both servers).

The broker, both servers and the load client share the machine: on a small
machine the client's and the broker's CPU is CPU the server does not get, as
it would not in production. Compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from keystone_ingest.dev.catchup import wait_bronze_caught_up
from keystone_ingest.dev.kafka import KAFKA_VERSION, KafkaCluster
from keystone_ingest.dev.launcher import ChildProcess, ServerProcess
from keystone_ingest.dev.mockbroker import MockBroker

from benchmarks.corpus import load_pool
from benchmarks.processes import REPO_ROOT, ReferenceProcess, reset_peak_rss, usage

MiB = 1024 * 1024
KINDS = ("real", "ingest", "reference")
REPLICA_STREAMS = 6  # the replicas sweep's streams: as many on each of 1, 2 or 3 replicas


@dataclass
class Run:
    kind: str
    phase: str  # max, fraction, batch_size, streams
    batch_size: int
    streams: int
    rate: float
    result: dict
    cpu_s: float
    peak_rss_bytes: int
    client_cpu_s: float = 0.0
    broker_cpu_s: float = 0.0
    bronze_cpu_s: float = 0.0  # the real server's Bronze worker process
    bronze_catchup_s: float | None = None  # from the end of the run until Bronze held what Kafka did
    load_average: float = 0.0  # the machine's 1-minute load average at the end of the run: others' work shows here
    replicas: int = 1  # ingest replicas the driver spread its streams over

    def row(self) -> dict:
        r = self.result
        orders = max(r["total_orders"], 1)
        return {
            "server": self.kind,
            "phase": self.phase,
            "replicas": self.replicas,
            "batch_size": self.batch_size,
            "streams": self.streams,
            "rate": self.rate,
            "orders_per_s": r["orders_per_s"],
            "batches_per_s": r["batches_per_s"],
            "latency_ms": r["latency_ms"],
            "cpu_s_per_million_orders": self.cpu_s / orders * 1e6,
            # Where the rest of the machine went: the load driver and the broker.
            "client_cpu_s_per_million_orders": self.client_cpu_s / orders * 1e6,
            "broker_cpu_s_per_million_orders": self.broker_cpu_s / orders * 1e6,
            "bronze_cpu_s_per_million_orders": self.bronze_cpu_s / orders * 1e6,
            "bronze_catchup_s": self.bronze_catchup_s,
            "server_cores": self.cpu_s / max(self.result["run_s"], 1e-9),
            "load_average": self.load_average,
            "peak_rss_mib": self.peak_rss_bytes / MiB,
            "total_orders": r["total_orders"],
            "errors": r["errors"],
        }


class Target:
    """One server process under test, with its own topics and Bronze directory."""

    def __init__(self, kind: str, broker: KafkaCluster | MockBroker, workdir: Path, server_args: list[str]) -> None:
        self.kind = kind
        self.broker_pid = broker.pid if isinstance(broker, MockBroker) else broker.pids()[1]
        suffix = uuid.uuid4().hex[:8]
        self.topic, self.dlq_topic = f"bench-{kind}-{suffix}", f"bench-{kind}-{suffix}.dlq"
        broker.create_topic(self.topic, partitions=6)
        broker.create_topic(self.dlq_topic, partitions=3)
        self.bronze = workdir / f"bronze-{kind}"
        self.bootstrap = broker.bootstrap
        common = ["--kafka-bootstrap", broker.bootstrap, "--topic", self.topic, "--dlq-topic", self.dlq_topic]
        log_path = workdir / f"{kind}.log"
        if kind in ("real", "ingest"):
            bronze = f"file://{self.bronze}" if kind == "real" else ""
            # Bronze files every 2 s (default 60 s), so the time the worker
            # takes to catch up after a run measures its work, not the wait.
            self.process: ChildProcess = ServerProcess(
                [
                    *common,
                    "--bronze-uri",
                    bronze,
                    "--bronze-group",
                    f"bench-{suffix}",
                    "--roll-age-s",
                    "2",
                    "--log-level",
                    "warning",
                    *server_args,
                ],
                log_path=log_path,
            )
        else:
            self.process = ReferenceProcess([*common, "--bronze-dir", str(self.bronze)], log_path=log_path)
        self.pid = self.process.process.pid
        self.bronze_pid: int | None = getattr(self.process, "bronze_pid", None)
        self.target = self.process.target
        self._replica_command = [*common, "--bronze-uri", "", "--log-level", "warning", *server_args]
        self._log_dir = workdir
        self.replicas: list[ServerProcess] = []  # more ingest replicas on the same topics (the replicas sweep)

    def set_replicas(self, count: int) -> None:
        """`count` replicas in all: this server and count - 1 more, all ingest only."""
        while len(self.replicas) < count - 1:
            log_path = self._log_dir / f"{self.kind}-replica-{len(self.replicas) + 1}.log"
            self.replicas.append(ServerProcess(self._replica_command, log_path=log_path))
        while len(self.replicas) > count - 1:
            replica = self.replicas.pop()
            replica.stop()
            replica.close()
        self.target = ",".join([self.process.target, *(r.target for r in self.replicas)])

    @property
    def pids(self) -> list[int]:
        """The server processes under test (not the Bronze worker)."""
        return [self.pid, *(r.process.pid for r in self.replicas)]

    def server_cpu_s(self) -> float:
        return sum(usage(pid).cpu_s for pid in self.pids)

    def peak_rss_bytes(self) -> int:
        return sum(usage(pid).peak_rss_bytes for pid in self.pids)

    def bronze_catchup_s(self, timeout_s: float = 600.0) -> float | None:
        """Seconds until Bronze holds everything the topics hold now (None: no Bronze worker)."""
        if self.bronze_pid is None:
            return None
        started = time.monotonic()
        wait_bronze_caught_up(self.bootstrap, [self.topic, self.dlq_topic], f"file://{self.bronze}", timeout_s)
        return time.monotonic() - started

    def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until the server (and its Bronze worker) has used less than 5% of a
        core for half a second: what an earlier run left in flight is done."""
        deadline = time.monotonic() + timeout_s
        before = self.cpu_s()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_s()
            if now - before < 0.025:
                return
            before = now

    def cpu_s(self) -> float:
        return self.server_cpu_s() + (usage(self.bronze_pid).cpu_s if self.bronze_pid else 0.0)

    def stop(self) -> int:
        self.set_replicas(1)
        code = self.process.stop()
        self.process.close()
        return code


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: list[Run] = []
        self._namespace = 0

    def drive(
        self,
        target: Target,
        phase: str,
        *,
        batch_size: int,
        streams: int,
        rate: float = 0.0,
        duration_s: float,
        warmup_s: float,
    ) -> Run:
        a = self.args
        target.wait_idle()
        self._namespace += 1
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [
                sys.executable,
                "-m",
                "benchmarks.driver",
                "--target",
                target.target,
                "--batch-size",
                str(batch_size),
                "--streams",
                str(streams),
                "--max-in-flight",
                str(a.max_in_flight),
                "--rate",
                str(rate),
                "--duration",
                str(duration_s),
                "--warmup",
                str(warmup_s),
                "--namespace",
                str(self._namespace),
                "--pool-orders",
                str(a.pool_orders),
                "--duplicate-ratio",
                str(a.duplicate_ratio),
                "--invalid-ratio",
                str(a.invalid_ratio),
                "--out",
                out.name,
                *(["--olist-days"] if a.olist_days else []),
            ]
            for pid in target.pids:
                reset_peak_rss(pid)
            before, broker_before, children_before = target.server_cpu_s(), usage(target.broker_pid), _children_cpu_s()
            bronze_before = usage(target.bronze_pid).cpu_s if target.bronze_pid else 0.0
            subprocess.run(command, check=False, cwd=REPO_ROOT)
            after, broker_after = target.server_cpu_s(), usage(target.broker_pid)
            client_cpu_s = _children_cpu_s() - children_before
            result = json.loads(Path(out.name).read_text() or "null")
            catchup_s = target.bronze_catchup_s() if phase in ("max", "sustained") else None
            bronze_cpu_s = (usage(target.bronze_pid).cpu_s - bronze_before) if target.bronze_pid else 0.0
        if result is None:
            raise RuntimeError(f"the load driver wrote no result for {target.kind} {phase}")
        run = Run(
            target.kind,
            phase,
            batch_size,
            streams,
            rate,
            result,
            after - before,
            target.peak_rss_bytes(),
            client_cpu_s=client_cpu_s,
            replicas=len(target.pids),
            broker_cpu_s=broker_after.cpu_s - broker_before.cpu_s,
            bronze_cpu_s=bronze_cpu_s,
            bronze_catchup_s=catchup_s,
            load_average=os.getloadavg()[0],
        )
        self.runs.append(run)
        row = run.row()
        lat = row["latency_ms"]
        print(
            f"  {target.kind:<9} {phase:<10} {f'x{len(target.pids)} ' if len(target.pids) > 1 else ''}"
            f"batch {batch_size:>5} streams {streams:>3} "
            f"rate {rate:>9,.0f}: {row['orders_per_s']:>9,.0f} orders/s  p50 {lat['p50']:>7.1f} ms  "
            f"p99 {lat['p99']:>7.1f} ms  cpu {row['cpu_s_per_million_orders']:>5.1f} s/M  "
            f"rss {row['peak_rss_mib']:>5.0f} MiB  load {row['load_average']:4.1f}"
            + (
                f"  bronze {row['bronze_cpu_s_per_million_orders']:.1f} s/M, caught up {catchup_s:.1f} s after"
                if catchup_s is not None
                else ""
            )
            + (f"  errors {row['errors']}" if row["errors"] else ""),
            flush=True,
        )
        return run

    def bench(self, target: Target) -> None:
        a = self.args
        print(f"== {target.kind}: {target.target}", flush=True)
        maxes = [
            self.drive(
                target, "max", batch_size=a.batch_size, streams=a.streams, duration_s=a.duration, warmup_s=a.warmup
            )
            for _ in range(a.repeats)
        ]
        max_rate = statistics.median(r.result["orders_per_s"] for r in maxes)
        for fraction in a.fractions:
            self.drive(
                target,
                f"{fraction:g}x",
                batch_size=a.batch_size,
                streams=a.streams,
                rate=fraction * max_rate,
                duration_s=a.duration,
                warmup_s=a.warmup,
            )
        # Before the sweeps: their many streams leave RSS high, and a peak is
        # measured from where the process is.
        if target.bronze_pid is not None and a.sustained:
            self.drive(
                target,
                "sustained",
                batch_size=a.batch_size,
                streams=a.streams,
                duration_s=a.sustained,
                warmup_s=a.warmup,
            )
        for size in a.batch_sizes:
            self.drive(
                target,
                "batch_size",
                batch_size=size,
                streams=a.streams,
                duration_s=a.sweep_duration,
                warmup_s=a.sweep_warmup,
            )
        for streams in a.streams_sweep:
            self.drive(
                target,
                "streams",
                batch_size=a.batch_size,
                streams=streams,
                duration_s=a.sweep_duration,
                warmup_s=a.sweep_warmup,
            )
        if target.kind == "ingest":
            for count in a.replicas_sweep:
                target.set_replicas(count)
                self.drive(
                    target,
                    "replicas",
                    batch_size=a.batch_size,
                    streams=REPLICA_STREAMS,
                    duration_s=a.duration,
                    warmup_s=a.warmup,
                )
            target.set_replicas(1)


def _children_cpu_s() -> float:
    """CPU time of this process's finished children (the load drivers)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# -- reporting -----------------------------------------------------------------------------


def _median_row(rows: list[dict]) -> dict:
    if not rows:
        return {}
    pick = sorted(rows, key=lambda r: r["orders_per_s"])[len(rows) // 2]
    return {
        **pick,
        "orders_per_s": statistics.median(r["orders_per_s"] for r in rows),
        "batches_per_s": statistics.median(r["batches_per_s"] for r in rows),
        "latency_ms": {k: statistics.median(r["latency_ms"][k] for r in rows) for k in pick["latency_ms"]},
        "cpu_s_per_million_orders": statistics.median(r["cpu_s_per_million_orders"] for r in rows),
        "client_cpu_s_per_million_orders": statistics.median(r["client_cpu_s_per_million_orders"] for r in rows),
        "broker_cpu_s_per_million_orders": statistics.median(r["broker_cpu_s_per_million_orders"] for r in rows),
        "bronze_cpu_s_per_million_orders": statistics.median(r["bronze_cpu_s_per_million_orders"] for r in rows),
        "server_cores": statistics.median(r["server_cores"] for r in rows),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "runs": len(rows),
    }


def summarise(rows: list[dict], args: argparse.Namespace) -> dict:
    kinds = [k for k in KINDS if any(r["server"] == k for r in rows)]
    phases = ["max", *[f"{f:g}x" for f in args.fractions], "sustained"]
    table = {
        k: {p: _median_row([r for r in rows if r["server"] == k and r["phase"] == p]) for p in phases} for k in kinds
    }
    ratios = {}
    ref = table.get("reference", {}).get("max")
    for kind in ("real", "ingest"):
        mine = table.get(kind, {}).get("max")
        if mine and ref:
            ratios[kind] = {
                "orders_per_s": mine["orders_per_s"] / ref["orders_per_s"],
                "cpu_per_order": ref["cpu_s_per_million_orders"]
                / (mine["cpu_s_per_million_orders"] + mine["bronze_cpu_s_per_million_orders"]),
                "p50_latency": ref["latency_ms"]["p50"] / mine["latency_ms"]["p50"],
            }
    sustained = table.get("real", {}).get("sustained")
    if sustained and ref:
        ratios["real_sustained"] = {"orders_per_s": sustained["orders_per_s"] / ref["orders_per_s"]}
    replicas = [
        {
            "replicas": r["replicas"],
            "orders_per_s": r["orders_per_s"],
            "p99_ms": r["latency_ms"]["p99"],
            "cpu_s_per_million_orders": r["cpu_s_per_million_orders"],
            "server_cores": r["server_cores"],
            "peak_rss_mib": r["peak_rss_mib"],
        }
        for r in rows
        if r["phase"] == "replicas"
    ]
    return {"table": table, "ratios": ratios, "replicas": replicas}


def print_table(summary: dict) -> None:
    print(
        "\nEnd to end (medians; batch {}, streams {})".format(_first(summary, "batch_size"), _first(summary, "streams"))
    )
    print(
        f"{'server':<10}{'load':<7}{'orders/s':>11}{'batches/s':>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'CPU s/M':>9}{'cores':>7}{'peak MiB':>10}{'bronze s/M':>12}{'broker s/M':>12}"
        f"{'client s/M':>12}{'catch-up s':>12}"
    )
    for kind, phases in summary["table"].items():
        for phase, row in phases.items():
            if not row:
                continue
            lat = row["latency_ms"]
            print(
                f"{kind:<10}{phase:<7}{row['orders_per_s']:>11,.0f}{row['batches_per_s']:>11,.1f}"
                f"{lat['p50']:>9.1f}{lat['p90']:>9.1f}{lat['p99']:>9.1f}{lat['max']:>9.1f}"
                f"{row['cpu_s_per_million_orders']:>9.2f}{row['server_cores']:>7.2f}{row['peak_rss_mib']:>10.0f}"
                f"{row['bronze_cpu_s_per_million_orders']:>12.2f}{row['broker_cpu_s_per_million_orders']:>12.2f}"
                f"{row['client_cpu_s_per_million_orders']:>12.2f}"
                f"{row['bronze_catchup_s'] if row.get('bronze_catchup_s') is not None else float('nan'):>12.1f}"
            )
    for kind, r in summary["ratios"].items():
        if kind in ("real", "ingest"):
            print(
                f"{kind} / reference: {r['orders_per_s']:.1f}x orders/s, {r['cpu_per_order']:.1f}x less CPU per "
                f"order, {r['p50_latency']:.1f}x lower p50 ack latency (at each one's maximum rate)"
            )
    if summary.get("replicas"):
        print(
            f"ingest replicas on this machine ({REPLICA_STREAMS} streams spread over them): "
            + "; ".join(
                f"{r['replicas']}: {r['orders_per_s']:,.0f} orders/s, {r['cpu_s_per_million_orders']:.2f} s/M over "
                f"{r['server_cores']:.2f} cores, p99 {r['p99_ms']:.0f} ms, RSS {r['peak_rss_mib']:.0f} MiB"
                for r in summary["replicas"]
            )
        )
    if "real_sustained" in summary["ratios"]:
        print(f"real, sustained: {summary['ratios']['real_sustained']['orders_per_s']:.1f}x the reference's maximum")
    if "kafka_ceiling" in summary:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in summary["ratios"].get("of_kafka_ceiling", {}).items())
        print(
            f"Kafka ceiling (the sink's record batches through send_batch alone): "
            f"{summary['kafka_ceiling']['orders_per_s']:,.0f} orders/s"
            + (f"; share reached: {shares}" if shares else "")
        )


def _first(summary: dict, key: str):
    for phases in summary["table"].values():
        if phases.get("max"):
            return phases["max"][key]
    return "?"


def plot(rows: list[dict], runs: list[Run], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install '.[test]')")
        return []
    paths = []
    colours = {"real": "tab:blue", "ingest": "tab:green", "reference": "tab:orange"}
    for phase, key, label, name in (
        ("batch_size", "batch_size", "orders per batch", "throughput_vs_batch_size.png"),
        ("streams", "streams", "concurrent streams", "throughput_vs_streams.png"),
    ):
        series = {
            kind: sorted((r[key], r["orders_per_s"]) for r in rows if r["server"] == kind and r["phase"] == phase)
            for kind in KINDS
        }
        if not any(series.values()):
            continue  # that sweep was not run
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for kind, points in series.items():
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=kind, color=colours[kind])
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("orders/s (acked)")
        ax.set_title(f"Throughput against {label}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(out_dir / name)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        if run.phase not in ("max", "0.5x"):
            continue
        sample = sorted(run.result["latency_sample_ms"])
        if not sample:
            continue
        ys = [(i + 1) / len(sample) for i in range(len(sample))]
        style = "-" if run.phase == "max" else "--"
        line_label: str | None = f"{run.kind}, {'maximum rate' if run.phase == 'max' else 'half of maximum'}"
        if line_label in {line.get_label() for line in ax.get_lines()}:
            line_label = None  # one legend entry per server and load
        ax.plot(sample, ys, style, color=colours[run.kind], label=line_label, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ack latency, ms (log)")
    ax.set_ylabel("fraction of batches")
    ax.set_title("Ack-latency distribution (CDF)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "ack_latency.png", dpi=110)
    plt.close(fig)
    paths.append(out_dir / "ack_latency.png")
    return paths


def machine() -> dict:
    info: dict[str, object] = {"uname": platform.uname()._asdict(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["cpus"] = len([ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("processor")])
        info["mem_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def floats(text: str) -> list[float]:
        return [float(v) for v in text.split(",") if v]

    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v]

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--servers", default="real,ingest,reference", help="which servers to measure, comma-separated")
    p.add_argument(
        "--sustained",
        type=float,
        default=60.0,
        help="seconds of the real server at full speed, Bronze worker included (0: none)",
    )
    p.add_argument(
        "--broker",
        choices=("kafka", "mock"),
        default="kafka",
        help="one Apache Kafka node (what users run), or librdkafka's mock cluster",
    )
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--max-in-flight", type=int, default=8, help="unacked batches per stream")
    p.add_argument("--repeats", type=int, default=3, help="runs at the maximum rate (the median is reported)")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds of each maximum/fraction run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--fractions", type=floats, default=[0.25, 0.5, 0.75], help="of the maximum rate, e.g. 0.25,0.5")
    p.add_argument("--batch-sizes", type=ints, default=[100, 250, 500, 1000, 2000, 5000])
    p.add_argument("--streams-sweep", type=ints, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--replicas-sweep", type=ints, default=[1, 2, 3], help="ingest replicas, for the ingest server")
    p.add_argument("--sweep-duration", type=float, default=4.0)
    p.add_argument("--sweep-warmup", type=float, default=1.0)
    p.add_argument("--pool-orders", type=int, default=100_000, help="distinct orders generated once and reused")
    p.add_argument("--duplicate-ratio", type=float, default=0.01)
    p.add_argument("--invalid-ratio", type=float, default=0.005)
    p.add_argument(
        "--olist-days",
        action="store_true",
        help="keep the generator's purchase days (2016-2018) instead of one live day",
    )
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for keystone-ingest serve")
    p.add_argument("--out-dir", default="build/bench")
    p.add_argument("--quick", action="store_true", help="a smoke run: one repeat, 2 s runs, short sweeps")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.warmup = 1, 2.0, 0.5
        args.fractions, args.sweep_duration, args.sweep_warmup = [0.5], 1.5, 0.5
        args.batch_sizes, args.streams_sweep, args.sustained = [100, 1000, 5000], [1, 4, 16], 5.0
    return args


def measure_ceiling(broker: KafkaCluster | MockBroker, args: argparse.Namespace) -> list[dict]:
    """The Kafka ceiling (benchmarks/ceiling.py: the sink's record batches
    through aiokafka's send_batch and nothing else), `--repeats` runs on a
    topic of its own, with the broker's CPU over each."""
    topic = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=6)
    broker_pid = broker.pid if isinstance(broker, MockBroker) else broker.pids()[1]
    runs = []
    for _ in range(args.repeats):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            before = usage(broker_pid).cpu_s
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.ceiling",
                    "--bootstrap",
                    broker.bootstrap,
                    "--topic",
                    topic,
                    "--partitions",
                    "6",
                    "--batch-size",
                    str(args.batch_size),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    str(args.warmup),
                    "--pool-orders",
                    str(args.pool_orders),
                    "--out",
                    out.name,
                ],
                check=True,
                cwd=REPO_ROOT,
            )
            run = json.loads(Path(out.name).read_text())
            run["broker_cpu_s"] = usage(broker_pid).cpu_s - before
        print(
            f"  kafka ceiling: {run['orders_per_s']:>9,.0f} orders/s (send_batch of native zstd-1 record batches)",
            flush=True,
        )
        runs.append(run)
    return runs


def start_broker(kind: str) -> KafkaCluster | MockBroker:
    return KafkaCluster(nodes=1) if kind == "kafka" else MockBroker(brokers=3, partitions=6)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # Generated once and cached: the drivers only load it.
    load_pool(
        args.pool_orders,
        duplicate_ratio=args.duplicate_ratio,
        invalid_ratio=args.invalid_ratio,
        live=not args.olist_days,
    )
    harness = Harness(args)
    exit_codes = {}
    with tempfile.TemporaryDirectory(prefix="keystone-bench-") as tmp, start_broker(args.broker) as broker:
        ceiling = measure_ceiling(broker, args) if args.repeats else []
        for kind in args.servers.split(","):
            target = Target(kind, broker, Path(tmp), args.server_arg)
            try:
                harness.bench(target)
            finally:
                exit_codes[kind] = target.stop()
    rows = [run.row() for run in harness.runs]
    summary = summarise(rows, args)
    if ceiling:
        summary["kafka_ceiling"] = {
            "orders_per_s": statistics.median(c["orders_per_s"] for c in ceiling),
            "runs": ceiling,
        }
        summary["ratios"]["of_kafka_ceiling"] = {
            kind: row["orders_per_s"] / summary["kafka_ceiling"]["orders_per_s"]
            for kind in ("real", "ingest")
            if (row := summary["table"].get(kind, {}).get("max"))
        }
    print_table(summary)
    plots = plot(rows, harness.runs, out_dir)
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": time.time() - started,
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items()},
        "broker": f"Apache Kafka {KAFKA_VERSION}, one node" if args.broker == "kafka" else "librdkafka mock cluster",
        "summary": summary,
        "runs": [{**run.row(), "latency_sample_ms": run.result["latency_sample_ms"]} for run in harness.runs],
        "server_exit_codes": exit_codes,
        "plots": [str(p) for p in plots],
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    print(f"results: {out_dir / 'results.json'}" + (f"; plots: {', '.join(str(p) for p in plots)}" if plots else ""))
    print(f"took {time.time() - started:.0f} s")
    failed = {k: c for k, c in exit_codes.items() if c != 0}
    errors = [r for r in rows if r["errors"]]
    if failed or errors:
        print(f"FAILED: server exit codes {failed}, runs with errors: {len(errors)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
