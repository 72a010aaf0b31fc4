"""Child processes the harness and the reference tests run: the pure-Python
reference server (the real server has `keystone_ingest.server.launcher.ServerProcess`),
and what a process has cost so far, read from /proc.

    with ReferenceProcess(["--kafka-bootstrap", bootstrap, "--bronze-dir", str(tmp)]) as ref:
        client = IngestClient(ref.target)
        ...
        assert ref.stop() == 0
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ReferenceProcess:
    def __init__(self, args: list[str], *, log_path: str | os.PathLike | None = None,
                 start_timeout_s: float = 60.0) -> None:  # fmt: skip
        self._dir = tempfile.TemporaryDirectory(prefix="keystone-reference-")
        self.ready_path = Path(self._dir.name) / "ready.json"
        self.log_path = Path(log_path) if log_path else Path(self._dir.name) / "reference.log"
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "benchmarks.reference.server", "--listen", "127.0.0.1:0",
                   *args, "--ready-file", str(self.ready_path)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + start_timeout_s
        while not self.ready_path.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"reference server exited with {self.process.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"reference server not serving after {start_timeout_s} s:\n{self.logs()}")
            time.sleep(0.05)
        time.sleep(0.05)  # the file is written in one go, but let the writer finish
        self.info = json.loads(self.ready_path.read_text())
        self.port: int = self.info["port"]
        self.target = f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"reference server did not exit {timeout_s} s after {sig!r}:\n{self.logs()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> ReferenceProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class ProcessUsage:
    cpu_s: float  # user + system time of every thread so far
    rss_bytes: int  # resident now
    peak_rss_bytes: int  # VmHWM: the most it was resident since it started (or since reset_peak)


def usage(pid: int) -> ProcessUsage:
    """CPU time and memory of a live process, from /proc/<pid>/stat and status."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    rss = peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return ProcessUsage(cpu_s, rss, peak)


def reset_peak_rss(pid: int) -> None:
    """Makes VmHWM start again from the current RSS (Linux 4.0+: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass
