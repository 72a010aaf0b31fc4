"""`serve`'s Bronze worker: `keystone-ingest bronze` in a child process.

A child, not a task, so Parquet encoding runs on another core than the
gRPC server's event loop, at a lower CPU priority (nice 10), and a worker
that fails does not take the ingest path down with it (acks depend on Kafka
only). Its settings travel as
KEYSTONE_* environment variables, so no password shows in `ps`. It dies with
the server (PR_SET_PDEATHSIG), is restarted with backoff when it exits on
its own (it keeps no state: it resumes where Bronze ends), and at shutdown
gets SIGTERM and the rest of the grace period to write and commit what it has
consumed.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import time

from keystone_ingest.client.cli import env_var
from keystone_ingest.retry import Backoff
from keystone_ingest.server.bronze.config import BronzeWorkerConfig
from keystone_ingest.server.errors import SinkFailed

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


NICENESS = 10
"""The worker's CPU priority below the server's: on a shared machine a flush's
Parquet encoding must not take the cores from the ack path (acks wait for
Kafka only; Bronze catches up from Kafka in the idle time)."""


def _in_child() -> None:
    # Runs in the child between fork and exec. The death signal follows the
    # thread that forked: asyncio's subprocess support forks from the loop's
    # thread, which lives as long as the server.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.nice(NICENESS)


def worker_environment(config: BronzeWorkerConfig) -> dict[str, str]:
    env = dict(os.environ)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = env_var("--" + f.name.replace("_", "-"))
        if value is None:
            env.pop(name, None)
        else:
            env[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


class BronzeProcess:
    def __init__(self, config: BronzeWorkerConfig) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="keystone-bronze-")
        self._ready_file = os.path.join(self._dir.name, "ready.json")
        self.config = dataclasses.replace(config, ready_file=self._ready_file)
        self.restarts = 0
        self.metrics_port: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, ready_timeout_s: float = 60.0) -> None:
        """Starts the worker and waits until it has joined its group. A worker
        that exits meanwhile (a Bronze location it cannot use, Kafka refusing
        its credentials) fails the start: a misconfiguration is said at once."""
        process = await self._spawn()
        deadline = time.monotonic() + ready_timeout_s
        ready = self._ready_file
        while not os.path.exists(ready):
            if process.returncode is not None:
                raise SinkFailed(f"the Bronze worker exited with code {process.returncode} at start (its log says why)")
            if time.monotonic() > deadline:
                raise SinkFailed(f"the Bronze worker did not join its group within {ready_timeout_s:g} s")
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.shield(process.wait())
            except TimeoutError:
                pass
        with open(ready) as f:
            self.metrics_port = json.load(f).get("metrics_port")
        self._supervisor = asyncio.create_task(self._supervise(), name="bronze-process")

    async def _spawn(self) -> asyncio.subprocess.Process:
        if os.path.exists(self._ready_file):
            os.unlink(self._ready_file)
        process = self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "keystone_ingest.server.cli",
            "bronze",
            env=worker_environment(self.config),
            preexec_fn=_in_child,
        )
        log.info("bronze worker process started", extra={"pid": process.pid})
        return process

    async def _supervise(self) -> None:
        backoff = Backoff(1.0, 30.0)
        process = self._process
        assert process is not None  # start() spawned it before this task
        while True:
            code = await process.wait()
            if self._stopping:
                return
            delay = backoff.next_delay_s()
            log.error(
                "bronze worker process exited; restarting it",
                extra={"exit_code": code, "restart_in_s": round(delay, 1)},
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            self.restarts += 1
            process = await self._spawn()

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await process.wait()
            except TimeoutError:
                log.error("bronze worker process did not stop in time; killed (its offsets are consumed again)")
                process.kill()
                await process.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        self._dir.cleanup()
        return process.returncode if process is not None else None
