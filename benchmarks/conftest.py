"""Shared set-up for the benchmarks, and the closing summary they print.

Each benchmark that moves orders records its median time with `record(...)`;
at the end of the run the summary prints orders/s and MB/s per benchmark and
the ratio of each native benchmark to the pure-Python reference measured in
the same run (the machine is shared and noisy: only same-run ratios are
comparable). The figures also go to build/bench/core.json.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

RESULTS_PATH = Path("build/bench/core.json")


@dataclass
class Measured:
    name: str
    group: str
    role: str  # "native" or "reference"
    median_s: float
    orders: int
    input_bytes: int

    @property
    def orders_per_s(self) -> float:
        return self.orders / self.median_s

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / self.median_s / 1e6


_measured: list[Measured] = []


@pytest.fixture
def record():
    def _record(benchmark, *, group: str, role: str, orders: int, input_bytes: int) -> None:
        _measured.append(Measured(benchmark.name, group, role, benchmark.stats.stats.median, orders, input_bytes))

    return _record


@pytest.fixture
def record_measured():
    """For figures timed outside pytest-benchmark (the C++ stage benchmark)."""

    def _record(name: str, *, group: str, role: str, median_s: float, orders: int, input_bytes: int = 0) -> None:
        _measured.append(Measured(name, group, role, median_s, orders, input_bytes))

    return _record


def pytest_terminal_summary(terminalreporter):
    if not _measured:
        return
    write = terminalreporter.write_line
    write("")
    write(
        "Core and stages (medians, per batch of 1,000 orders unless named; ratio = native / pure-Python "
        "reference in this run)"
    )
    write(f"{'benchmark':<56} {'orders/s':>12} {'µs/order':>9} {'MB/s':>9} {'ratio':>8}")
    reference = {m.group: m for m in _measured if m.role == "reference"}
    rows = []
    for m in _measured:
        ref = reference.get(m.group)
        ratio = ref.median_s / m.median_s if ref and m.role == "native" else None
        ratio_text = f"{ratio:7.1f}x" if ratio else ""
        mb = f"{m.mb_per_s:9.1f}" if m.input_bytes else ""
        write(f"{m.name:<56} {m.orders_per_s:>12,.0f} {1e6 / m.orders_per_s:>9.3f} {mb:>9} {ratio_text:>8}")
        rows.append({**asdict(m), "orders_per_s": m.orders_per_s, "mb_per_s": m.mb_per_s, "ratio": ratio})
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({"machine": platform.uname()._asdict(), "results": rows}, indent=2) + "\n")
    write(f"results written to {RESULTS_PATH}")
