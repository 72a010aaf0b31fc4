"""Run `keystone-ingest serve` (or `keystone-ingest bronze`) as a child process and learn where it listens.

Used by `make demo`, the integration tests and the benchmark harness: they all
need a real server process (one that can be signalled and killed) and its
ports, which it reports through `--ready-file` once it is serving.

    with ServerProcess(["--bronze-uri", f"file://{tmp}"]) as server:
        client = IngestClient(server.target)
        ...
        assert server.stop() == 0          # SIGTERM, graceful
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


class ChildProcess:
    """A child that reports where it listens through `--ready-file` (JSON with
    at least `port`) once it serves; logs go to `log_path`. The lifecycle shared
    by `ServerProcess` and the benchmark's reference server."""

    name = "process"

    def __init__(
        self,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.log_path = Path(log_path) if log_path else Path(self._dir.name) / f"{self.name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it until close()
        self.process = subprocess.Popen(
            [*command, "--ready-file", str(self.ready_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        self.info = self._wait_ready(start_timeout_s)
        self.port: int | None = self.info.get("port")  # None: a Bronze worker serves no gRPC
        self.target = f"127.0.0.1:{self.port}"

    def _make_dir(self) -> Path:
        """A private directory for the ready file, the log and what the child keeps."""
        self._dir = tempfile.TemporaryDirectory(prefix=f"keystone-{self.name}-")
        self.ready_path = Path(self._dir.name) / "ready.json"
        return Path(self._dir.name)

    def _wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_path.exists():
                try:
                    return json.loads(self.ready_path.read_text())
                except ValueError:
                    pass  # caught while being written; look again
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} before serving:\n{self.logs()}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"{self.name} not serving after {timeout_s} s:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """The child's JSON log lines, parsed (other lines are skipped)."""
        records = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Signals the child and waits for it to exit; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"{self.name} did not exit {timeout_s} s after {signal.Signals(sig).name}:\n{self.logs()}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()
        self._log.close()
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _KeystoneProcess(ChildProcess):
    """`keystone-ingest <command>`: the command and its fixed flags, then `args`."""

    command: tuple[str, ...] = ()

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self._make_dir()
        super().__init__(
            [sys.executable, "-m", "keystone_ingest.server.cli", *self.command, *args],
            env={**os.environ, **(env or {})},
            cwd=cwd,
            log_path=log_path,
            start_timeout_s=start_timeout_s,
        )


class ServerProcess(_KeystoneProcess):
    name = "server"
    # Ports picked by the system, so any number of servers (and their
    # Bronze workers) run side by side.
    command = (
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--bronze-metrics-listen",
        "127.0.0.1:0",
    )

    def __init__(self, args: Sequence[str] = (), **options) -> None:
        super().__init__(args, **options)
        self.metrics_port: int | None = self.info["metrics_port"]
        self.kafka_bootstrap: str = self.info["kafka_bootstrap"]
        self.bronze_pid: int | None = self.info.get("bronze_pid")
        self.bronze_metrics_port: int | None = self.info.get("bronze_metrics_port")


class BronzeWorkerProcess(_KeystoneProcess):
    """`keystone-ingest bronze`, ready once it has joined its consumer group."""

    name = "bronze"
    command = ("bronze", "--metrics-listen", "127.0.0.1:0")

    def __init__(self, args: Sequence[str] = (), **options) -> None:
        super().__init__(args, **options)
        self.metrics_port: int = self.info["metrics_port"]
