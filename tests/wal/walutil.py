"""Helpers of the write-ahead log tests: real batches through the real core, a
bounded `run`, and a "crash" of an in-process log."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pyarrow.dataset as ds

from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core
from keystone_ingest.server import wal as wal_module
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.sinks.bronze import BronzeRows
from keystone_ingest.server.wal import WalRecord, WriteAheadLog

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
    """Run an async test body with a bound, so a hang fails instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class Batches:
    """Generated batches processed by one core, as the pipeline would commit them."""

    def __init__(self, seed: int = 1, core: Core | None = None, invalid_ratio: float = 0.02,
                 duplicate_ratio: float = 0.02) -> None:  # fmt: skip
        self.generator = OrderGenerator(seed=seed, duplicate_ratio=duplicate_ratio, invalid_ratio=invalid_ratio)
        self.core = core or Core()
        self.now_ms = 1_800_000_000_000

    def raw(self, orders: int = 50) -> bytes:
        return self.generator.batch(orders).SerializeToString()

    def record(self, orders: int = 50, raw: bytes | None = None) -> WalRecord:
        raw = raw or self.raw(orders)
        self.now_ms += 1
        batch = Batch(raw, self.core.process(raw, now_ms=self.now_ms))
        return WalRecord.of(batch, BronzeRows.from_batch(batch), self.now_ms)


def crash(wal: WriteAheadLog) -> None:
    """Leave `wal` as a SIGKILL would: no snapshot, no segment deleted, files as
    they are; only this process's file descriptors (and so the lock) are let go."""
    wal._closed = True
    if wal._thread is not None:
        wal._queue.put(wal_module._STOP)
        wal._thread.join(10)
    if wal._maintenance is not None:
        wal._maintenance.cancel()
    for fd in (wal._fd, wal.manifest._fd, wal._lock_fd):
        if fd >= 0:
            os.close(fd)
    wal._fd = wal.manifest._fd = wal._lock_fd = -1


def segment_paths(directory: str) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".wal"))


def bronze_table(root: str, table: str):
    path = os.path.join(root, table)
    if not os.path.isdir(path):
        return None
    return ds.dataset(path, format="parquet", partitioning="hive").to_table()
