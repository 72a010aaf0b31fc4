"""Child processes the harness and the reference tests run: the pure-Python
reference server (the real server has `keystone_ingest.dev.launcher.ServerProcess`),
and what a process has cost so far, read from /proc.

    with ReferenceProcess(["--kafka-bootstrap", bootstrap, "--bronze-dir", str(tmp)]) as ref:
        client = IngestClient(ref.target)
        ...
        assert ref.stop() == 0
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from keystone_ingest.dev.launcher import ChildProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ReferenceProcess(ChildProcess):
    name = "reference"

    def __init__(
        self, args: list[str], *, log_path: str | os.PathLike | None = None, start_timeout_s: float = 60.0
    ) -> None:
        self._make_dir()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        command = [sys.executable, "-m", "benchmarks.reference.server", "--listen", "127.0.0.1:0", *args]
        super().__init__(command, env=env, cwd=REPO_ROOT, log_path=log_path, start_timeout_s=start_timeout_s)


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
