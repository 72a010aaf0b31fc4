"""`keystone-ingest load`: stream synthetic orders at a server and summarise like ghz.

    summary = run_load(LoadOptions(target="127.0.0.1:50051", count=200_000, duplicate_ratio=0.01))
    print(summary.format_text()); sys.exit(summary.exit_code)

Each of `streams` streams is its own `AsyncIngestClient` (its own channel and
connection, as separate upstream services would be) fed by its own
`OrderGenerator`. Orders are generated before the clock starts: with a
`count`, every batch is made up front (in parallel processes when there are
many); with a `duration`, one generator process per stream runs ahead of the
sender through a bounded queue, so the time measured is the client and the
server, not Python building protobuf messages.

Every batch gets a fresh batch_id `load-{seed}-{stream}-{k}` and fresh
orders (reused orders would be dropped by the server's dedup window). The
seed fixes orders and batch ids: running again with the same `--seed` resends
the same batches, which the server must answer with ACK_STATUS_DUPLICATE_BATCH.
Without `--seed` a random one is drawn and reported in the summary.

Latency is per batch: from the moment `send` queued it to its ack, resends
included. The run's time ends with the last ack.

`drive()` (the sending half) is shared with `keystone-ingest replay`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import os
import random
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol, TextIO

import grpc
from keystone_ingest.client.client import (
    AckMismatchError,
    AsyncIngestClient,
    ClientClosedError,
    IngestRpcError,
    RetryPolicy,
)
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.proto.v1 import ingest_pb2

# Below this many orders, spawning generator processes costs more than it saves.
_PARALLEL_GENERATION_MIN_ORDERS = 50_000
# Batches a duration-mode generator process may run ahead of its stream
# (the pipe holds a little more).
_GENERATOR_QUEUE_BATCHES = 16
_HISTOGRAM_BUCKETS = 10
_PROGRESS_INTERVAL_S = 0.25


class PreparedBatch(NamedTuple):
    """A serialised OrderBatch ready to send: its batch_id, its bytes, how many orders it holds."""

    batch_id: str
    payload: bytes
    orders: int


@dataclass
class LoadOptions:
    """What `run_load` does; the CLI flags map one to one (see client/cli.py)."""

    target: str = "127.0.0.1:50051"
    rate: float = 0.0  # orders/s over all streams; 0 = as fast as possible
    duration_s: float | None = None  # run this long; otherwise send `count` orders
    count: int = 100_000
    batch_size: int = 1000
    streams: int = 4
    max_in_flight: int = 8  # per stream
    seed: int | None = None  # None: a random seed, reported in the summary
    duplicate_ratio: float = 0.0
    invalid_ratio: float = 0.0
    source: str = "keystone-load"
    progress: bool = False  # live progress line on stderr
    retry_deadline_s: float = 60.0
    ack_timeout_s: float | None = 60.0
    # TLS and authentication, passed to every client.
    credentials: grpc.ChannelCredentials | None = None
    metadata: Any = None
    # From this many orders up (and two CPUs or more), generator processes make
    # the batches; below it spawning them costs more than it saves. No flag.
    parallel_generation_min_orders: int = _PARALLEL_GENERATION_MIN_ORDERS

    def validate(self) -> None:
        if self.batch_size < 1 or self.streams < 1 or self.max_in_flight < 1:
            raise ValueError("batch size, streams and max in flight must be at least 1")
        if self.duration_s is None and self.count < 1:
            raise ValueError("count must be at least 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration must be positive")
        if self.rate < 0:
            raise ValueError("rate must be >= 0")
        if min(self.duplicate_ratio, self.invalid_ratio) < 0 or self.duplicate_ratio + self.invalid_ratio > 1:
            raise ValueError("duplicate and invalid ratios must be >= 0 and sum to at most 1")


# -- summary ---------------------------------------------------------------------------


@dataclass
class LoadSummary:
    """What a run did, for people (`format_text`) and programs (`to_dict`, `--json`)."""

    target: str
    streams: int
    batch_size: int
    seed: int | None
    orders: int  # orders sent (each counted once, however often resent)
    batches: int
    total_s: float
    orders_per_s: float  # acked orders per second of the run
    batches_per_s: float
    latency_ms: dict[str, float]  # average, fastest, slowest, p50, p90, p95, p99
    histogram: list[dict[str, float]]  # [{"le_ms": upper bound, "count": batches}], 10 buckets
    statuses: dict[str, int]  # batches per AckStatus name: ACCEPTED, DUPLICATE_BATCH, REJECTED
    accepted: int  # orders, from the acks (a DUPLICATE_BATCH ack repeats its first ack's counts)
    duplicates: int
    rejected: int
    errors: dict[str, int]  # batches not acked, per gRPC status (or client error) name
    error_examples: dict[str, str]  # the first message seen for each error
    reconnects: int
    resends: int
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. replay's rows read and skipped

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        lat = self.latency_ms
        lines = [
            "Summary:",
            f"  Target:\t{self.target} ({self.streams} streams, {self.batch_size} orders/batch"
            + (f", seed {self.seed})" if self.seed is not None else ")"),
            f"  Count:\t{self.orders} orders in {self.batches} batches",
            f"  Total:\t{self.total_s * 1000:.2f} ms",
            f"  Slowest:\t{lat['slowest']:.2f} ms",
            f"  Fastest:\t{lat['fastest']:.2f} ms",
            f"  Average:\t{lat['average']:.2f} ms",
            f"  Orders/sec:\t{self.orders_per_s:.2f}",
            f"  Batches/sec:\t{self.batches_per_s:.2f}",
        ]
        if self.reconnects or self.resends:
            lines.append(f"  Reconnects:\t{self.reconnects} ({self.resends} batches resent)")
        lines += ["", "Ack latency histogram (ms per batch):"]
        peak = max((bucket["count"] for bucket in self.histogram), default=0)
        for bucket in self.histogram:
            bar = "∎" * (round(40 * bucket["count"] / peak) if peak else 0)
            lines.append(f"  {bucket['le_ms']:.3f} [{bucket['count']}]\t|{bar}")
        lines += ["", "Latency distribution:"]
        lines += [f"  {q} % in {lat[f'p{q}']:.2f} ms" for q in (50, 90, 95, 99)]
        lines += ["", "Status distribution:"]
        lines += [f"  [{name}]\t{count} batches" for name, count in self.statuses.items()]
        lines += [
            "",
            "Orders:",
            f"  accepted {self.accepted}, duplicates {self.duplicates}, rejected {self.rejected}",
        ]
        for title, values in self.extra.items():
            if isinstance(values, dict):
                lines += ["", f"{title.replace('_', ' ').capitalize()}:"]
                lines += [f"  [{key}]\t{value}" for key, value in values.items()] or ["  none"]
            else:
                lines.append(f"  {title.replace('_', ' ')}: {values}")
        if self.errors:
            lines += ["", "Error distribution:"]
            lines += [
                f"  [{count}]\t{code}: {self.error_examples.get(code, '')}" for code, count in self.errors.items()
            ]
        return "\n".join(lines)


class _Recorder:
    """Counts what the streams sent and what came back; one per run, on the event loop."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.finished: float | None = None
        self.sent_orders = 0
        self.sent_batches = 0
        self.acked_orders = 0
        self.acked_batches = 0
        self.latencies_s: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.accepted = self.duplicates = self.rejected = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.error_examples: dict[str, str] = {}
        self.reconnects = 0
        self.resends = 0

    def sent(self, orders: int) -> None:
        self.sent_orders += orders
        self.sent_batches += 1

    def done(self, queued_at: float, orders: int, future: asyncio.Future[ingest_pb2.BatchAck]) -> None:
        if future.cancelled():
            self._error("CANCELLED", "cancelled")
            return
        error = future.exception()
        if error is not None:
            self._error(_error_name(error), str(error))
            return
        ack = future.result()
        self.latencies_s.append(time.perf_counter() - queued_at)
        self.acked_batches += 1
        self.acked_orders += orders
        self.statuses[_status_name(ack.status)] += 1
        self.accepted += ack.accepted
        self.duplicates += ack.duplicates
        self.rejected += ack.rejected

    def _error(self, name: str, message: str) -> None:
        self.errors[name] += 1
        self.error_examples.setdefault(name, message)

    def summary(self, options: LoadOptions, seed: int | None, extra: dict[str, Any] | None = None) -> LoadSummary:
        total_s = (self.finished or time.perf_counter()) - self.started
        latencies_ms = sorted(s * 1000 for s in self.latencies_s)
        statuses = {name: self.statuses.get(name, 0) for name in ("ACCEPTED", "DUPLICATE_BATCH", "REJECTED")}
        statuses.update({name: n for name, n in self.statuses.items() if name not in statuses})
        return LoadSummary(
            target=options.target,
            streams=options.streams,
            batch_size=options.batch_size,
            seed=seed,
            orders=self.sent_orders,
            batches=self.sent_batches,
            total_s=total_s,
            orders_per_s=self.acked_orders / total_s if total_s > 0 else 0.0,
            batches_per_s=self.acked_batches / total_s if total_s > 0 else 0.0,
            latency_ms=latency_stats(latencies_ms),
            histogram=histogram(latencies_ms),
            statuses=statuses,
            accepted=self.accepted,
            duplicates=self.duplicates,
            rejected=self.rejected,
            errors=dict(self.errors),
            error_examples=dict(self.error_examples),
            reconnects=self.reconnects,
            resends=self.resends,
            extra=extra or {},
        )


def _error_name(error: BaseException) -> str:
    if isinstance(error, IngestRpcError):
        return error.code.name
    if isinstance(error, AckMismatchError):
        return "ACK_MISMATCH"
    if isinstance(error, ClientClosedError):
        return "CLIENT_CLOSED"
    return type(error).__name__


def _status_name(status: int) -> str:
    try:
        return ingest_pb2.AckStatus.Name(status).removeprefix("ACK_STATUS_")
    except ValueError:
        return f"UNKNOWN_{status}"


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Nearest rank: the smallest value with at least q% of the values at or below it.
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(sorted_ms: Sequence[float]) -> dict[str, float]:
    """The summary's latency figures (ms) of sorted latencies: average, fastest,
    slowest and the nearest-rank p50, p90, p95, p99; zeros when there are none."""
    return {
        "average": sum(sorted_ms) / len(sorted_ms) if sorted_ms else 0.0,
        "fastest": sorted_ms[0] if sorted_ms else 0.0,
        "slowest": sorted_ms[-1] if sorted_ms else 0.0,
        **{f"p{q}": _percentile(sorted_ms, q) for q in (50, 90, 95, 99)},
    }


def histogram(sorted_ms: Sequence[float]) -> list[dict[str, float]]:
    """The summary's histogram of sorted latencies (ms), as ghz's: equal-width
    buckets from fastest to slowest, each labelled by its upper bound."""
    if not sorted_ms:
        return []
    low, high = sorted_ms[0], sorted_ms[-1]
    width = (high - low) / _HISTOGRAM_BUCKETS
    counts = [0] * _HISTOGRAM_BUCKETS
    for value in sorted_ms:
        # The first bucket whose upper bound is at or above the value.
        index = math.ceil((value - low) / width) - 1 if width > 0 else _HISTOGRAM_BUCKETS - 1
        counts[min(_HISTOGRAM_BUCKETS - 1, max(0, index))] += 1
    return [{"le_ms": low + width * (k + 1), "count": counts[k]} for k in range(_HISTOGRAM_BUCKETS)]


# -- batch sources ------------------------------------------------------------------------


class BatchSource(Protocol):
    """Where a stream takes its next batch from; None when there are no more."""

    async def next(self) -> PreparedBatch | None: ...


class ListSource:
    """Batches made before the run."""

    def __init__(self, batches: Sequence[PreparedBatch]) -> None:
        self._batches = iter(batches)

    async def next(self) -> PreparedBatch | None:
        return next(self._batches, None)


class IteratorSource:
    """Batches made while sending; one instance may be shared by several streams
    (they run on one event loop, so `next` never interleaves)."""

    def __init__(self, batches: Iterator[PreparedBatch]) -> None:
        self._batches = batches

    async def next(self) -> PreparedBatch | None:
        return next(self._batches, None)


def stream_seed(seed: int, stream: int) -> int:
    """Stream 0 uses the seed itself (one stream reproduces `OrderGenerator(seed)`); the others derive theirs."""
    if stream == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "big")


def generate_batches(
    stream: int,
    seed: int,
    orders: int | None,
    batch_size: int,
    duplicate_ratio: float,
    invalid_ratio: float,
    source: str,
) -> Iterator[PreparedBatch]:
    """The batches stream `stream` sends, in order: `orders` orders, or without end when None."""
    generator = OrderGenerator(stream_seed(seed, stream), duplicate_ratio, invalid_ratio)
    k = 0
    remaining = orders
    while remaining is None or remaining > 0:
        n = batch_size if remaining is None else min(batch_size, remaining)
        batch_id = f"load-{seed}-{stream}-{k}"
        yield PreparedBatch(batch_id, generator.batch(n, batch_id=batch_id, source=source).SerializeToString(), n)
        k += 1
        if remaining is not None:
            remaining -= n


# Generator worker processes are plain subprocesses (`python -c ...`), not
# multiprocessing: multiprocessing's spawn re-imports the caller's main
# module, which breaks for callers without an import guard, and fork is
# unsafe once gRPC threads run. A worker writes framed batches to stdout:
# a header (batch_id length, payload length, orders), then both byte strings.
_FRAME = struct.Struct("!III")
_WORKER_CODE = "import sys; from keystone_ingest.client.load import _worker_main; _worker_main(sys.argv[1:])"


def _worker_main(argv: list[str]) -> None:
    stream, seed, orders, batch_size = (int(value) for value in argv[:4])
    duplicate_ratio, invalid_ratio, source = float(argv[4]), float(argv[5]), argv[6]
    out = sys.stdout.buffer
    try:
        for item in generate_batches(
            stream, seed, orders if orders >= 0 else None, batch_size, duplicate_ratio, invalid_ratio, source
        ):
            batch_id = item.batch_id.encode()
            out.write(_FRAME.pack(len(batch_id), len(item.payload), item.orders))
            out.write(batch_id)
            out.write(item.payload)
        out.flush()
    except BrokenPipeError:  # the run ended and stopped reading: expected in duration mode
        sys.stderr.close()


class _GeneratorWorker:
    """One generator subprocess and the batches it has written so far."""

    def __init__(self, stream: int, seed: int, orders: int | None, options: LoadOptions, ahead: int) -> None:
        self.stream = stream
        self._args = [
            str(stream),
            str(seed),
            str(-1 if orders is None else orders),
            str(options.batch_size),
            repr(options.duplicate_ratio),
            repr(options.invalid_ratio),
            options.source,
        ]
        self._queue: asyncio.Queue[PreparedBatch | BaseException | None] = asyncio.Queue(ahead)
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER_CODE, *self._args, stdout=asyncio.subprocess.PIPE
        )
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None  # start() made it, with a pipe, before this task
        stdout = process.stdout
        try:
            while True:
                try:
                    header = await stdout.readexactly(_FRAME.size)
                except asyncio.IncompleteReadError as end:
                    if end.partial:
                        raise
                    break
                id_length, payload_length, orders = _FRAME.unpack(header)
                batch_id = (await stdout.readexactly(id_length)).decode()
                payload = await stdout.readexactly(payload_length)
                await self._queue.put(PreparedBatch(batch_id, payload, orders))
            if (code := await process.wait()) != 0:
                raise RuntimeError(f"order generator for stream {self.stream} exited with status {code}")
            await self._queue.put(None)
        except Exception as error:  # handed to the consumer, which raises it
            await self._queue.put(error)

    async def next(self) -> PreparedBatch | None:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def wait_ahead(self) -> None:
        """Waits until the worker has filled its queue (or finished), so the clock starts with batches ready."""
        assert self._pump is not None, "wait_ahead() before start()"
        while not self._queue.full() and not self._pump.done():
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        if self._process is not None:
            if self._process.returncode is None:
                self._process.kill()
            # Python 3.11's wait() returns only once the pipe is closed: read it to its end.
            assert self._process.stdout is not None  # start() asked for a pipe
            await self._process.stdout.read()
            await self._process.wait()


class _WorkerSource:
    def __init__(self, worker: _GeneratorWorker) -> None:
        self._worker = worker

    async def next(self) -> PreparedBatch | None:
        return await self._worker.next()


def _orders_per_stream(count: int, streams: int) -> list[int]:
    return [count // streams + (1 if stream < count % streams else 0) for stream in range(streams)]


async def _generate_up_front(seed: int, options: LoadOptions) -> list[list[PreparedBatch]]:
    plan = _orders_per_stream(options.count, options.streams)
    if options.count < options.parallel_generation_min_orders or (os.cpu_count() or 1) < 2:
        return [
            list(
                generate_batches(
                    stream,
                    seed,
                    orders,
                    options.batch_size,
                    options.duplicate_ratio,
                    options.invalid_ratio,
                    options.source,
                )
            )
            for stream, orders in enumerate(plan)
        ]
    workers = [_GeneratorWorker(stream, seed, orders, options, ahead=0) for stream, orders in enumerate(plan)]
    try:
        for worker in workers:
            await worker.start()

        async def collect(worker: _GeneratorWorker) -> list[PreparedBatch]:
            batches = []
            while (item := await worker.next()) is not None:
                batches.append(item)
            return batches

        return list(await asyncio.gather(*(collect(worker) for worker in workers)))
    finally:
        for worker in workers:
            await worker.close()


# -- the run --------------------------------------------------------------------------------


async def drive(
    sources: Sequence[BatchSource],
    options: LoadOptions,
    *,
    seed: int | None,
    total_orders: int | None = None,
    extra: Any = None,
) -> LoadSummary:
    """Send every batch of `sources[i]` on stream i, wait for all acks, summarise.

    `options` gives target, rate, duration, in-flight bound and client
    settings; `total_orders` (when known) scales the progress bar; `extra`
    is a dict (or a callable returning one, read at the end) added to the summary.
    """
    recorder = _Recorder()
    deadline = recorder.started + options.duration_s if options.duration_s is not None else None
    per_stream_rate = options.rate / len(sources) if options.rate > 0 else 0.0
    retry = RetryPolicy(deadline_s=options.retry_deadline_s)
    progress = (
        asyncio.create_task(_show_progress(recorder, total_orders, options.duration_s, sys.stderr))
        if options.progress
        else None
    )

    async def stream(index: int, source: BatchSource) -> None:
        client = AsyncIngestClient(
            options.target,
            max_in_flight=options.max_in_flight,
            source=options.source,
            credentials=options.credentials,
            metadata=options.metadata,
            # A connection per stream, like separate upstream services (gRPC
            # would otherwise share one connection between identical channels).
            channel_options=[("grpc.use_local_subchannel_pool", 1)],
            retry=retry,
            ack_timeout_s=options.ack_timeout_s,
        )
        sent_orders = 0
        async with client:
            while deadline is None or time.perf_counter() < deadline:
                item = await source.next()
                if item is None:
                    break
                if per_stream_rate:
                    # Open-loop schedule: each batch leaves when the stream's
                    # rate says it is due; a stream that fell behind sends at once.
                    due = recorder.started + sent_orders / per_stream_rate
                    if deadline is not None and due >= deadline:
                        break
                    if (wait_s := due - time.perf_counter()) > 0:
                        await asyncio.sleep(wait_s)
                future = await client.send(item.payload, batch_id=item.batch_id)
                future.add_done_callback(partial(recorder.done, time.perf_counter(), item.orders))
                recorder.sent(item.orders)
                sent_orders += item.orders
            await client.flush()
        recorder.reconnects += client.stats.reconnects
        recorder.resends += client.stats.resends

    try:
        await asyncio.gather(*(stream(index, source) for index, source in enumerate(sources)))
        # Let the last done-callbacks run before the clock stops.
        await asyncio.sleep(0)
        recorder.finished = time.perf_counter()
    finally:
        if progress is not None:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            _print_progress(recorder, total_orders, options.duration_s, sys.stderr, final=True)
    extra = extra() if callable(extra) else extra
    return recorder.summary(options, seed, extra)


async def run_load_async(options: LoadOptions) -> LoadSummary:
    """`run_load` for callers already inside an event loop."""
    options.validate()
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    if options.duration_s is None:
        made = await _generate_up_front(seed, options)
        return await drive([ListSource(batches) for batches in made], options, seed=seed, total_orders=options.count)
    workers = [
        _GeneratorWorker(stream, seed, None, options, _GENERATOR_QUEUE_BATCHES) for stream in range(options.streams)
    ]
    try:
        for worker in workers:
            await worker.start()
        await asyncio.gather(*(worker.wait_ahead() for worker in workers))
        return await drive([_WorkerSource(worker) for worker in workers], options, seed=seed)
    finally:
        for worker in workers:
            await worker.close()


def run_load(options: LoadOptions) -> LoadSummary:
    """Run a load test to completion and return its summary (for `make demo` and benchmarks)."""
    return asyncio.run(run_load_async(options))


# -- progress ------------------------------------------------------------------------------


async def _show_progress(recorder: _Recorder, total_orders: int | None, duration_s: float | None, out: TextIO) -> None:
    while True:
        _print_progress(recorder, total_orders, duration_s, out)
        await asyncio.sleep(_PROGRESS_INTERVAL_S)


def _print_progress(
    recorder: _Recorder, total_orders: int | None, duration_s: float | None, out: TextIO, final: bool = False
) -> None:
    elapsed_s = (recorder.finished or time.perf_counter()) - recorder.started
    if total_orders:
        done = recorder.acked_orders / total_orders
    elif duration_s:
        done = min(1.0, elapsed_s / duration_s)
    else:
        done = 0.0
    bar = "#" * int(done * 30)
    rate = recorder.acked_orders / elapsed_s if elapsed_s > 0 else 0.0
    line = (
        f"\r[{bar:<30}] {done * 100:5.1f}%  sent {recorder.sent_orders:,}  acked {recorder.acked_orders:,} orders"
        f"  {rate:,.0f} orders/s  {elapsed_s:.1f} s"
    )
    if recorder.errors:
        line += f"  errors {sum(recorder.errors.values())}"
    out.write(line + ("\n" if final else ""))
    out.flush()
