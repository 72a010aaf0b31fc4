"""Orders for the end-to-end benchmark, made once and reused without per-order work.

Generating Olist-shaped orders in Python costs ~40 µs each (the generator makes
~24,000 orders/s), far slower than the server under test, so the load would
measure the generator. Instead a *pool* of orders is generated once, serialised
and cached under build/bench/, and batches are assembled from it with bytes
operations only:

  - each order is stored already framed as an `OrderBatch.orders` field (tag,
    length, `Order` bytes), so a batch is a header (`batch_id`, `source`) plus a
    join of consecutive framed orders;
  - the first 8 characters of every event_id are a placeholder (`~~~~~~~~`);
    each pass over the pool replaces it with a tag of its own (`bytes.replace`
    on the joined chunk, ~0.1 µs per order), so every pass sends new event_ids
    and the server's dedup window sees the steady state of fresh traffic. The
    generator's duplicates (an earlier order re-sent) keep their tag within a pass,
    so they stay duplicates; its invalid orders stay invalid;
  - `live=True` (the default) moves every purchase timestamp onto one day, as
    live traffic is: the Bronze writer then has one partition per table. The
    generator's own dates span 2016-2018 (~700 days), which makes Bronze write
    one small file per table and day (see README, "Bronze layout").
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.proto.v1 import ingest_pb2

PLACEHOLDER = b"~~~~~~~~"
LIVE_DAY_START_S = 1_780_272_000  # 2026-06-01T00:00:00Z: every live order is bought on this day
_LENGTH = struct.Struct("<I")
CACHE_DIR = Path("build/bench")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _framed(order: ingest_pb2.Order) -> bytes:
    payload = order.SerializeToString()
    return b"\x1a" + _varint(len(payload)) + payload  # field 3 (orders), length-delimited


def make_pool(orders: int, *, seed: int, duplicate_ratio: float, invalid_ratio: float, live: bool) -> list[bytes]:
    """`orders` framed orders with placeholder event_ids."""
    generator = OrderGenerator(seed=seed, duplicate_ratio=duplicate_ratio, invalid_ratio=invalid_ratio)
    pool: list[bytes] = []
    while len(pool) < orders:
        for order in generator.batch(min(1000, orders - len(pool))).orders:
            if order.event_id:
                # The generator's invalid `event_id_too_long` repeats the id: tag every copy.
                order.event_id = order.event_id.replace(order.event_id[:8], PLACEHOLDER.decode())
            if live and order.HasField("order_purchase_timestamp"):
                ts = order.order_purchase_timestamp
                ts.seconds = LIVE_DAY_START_S + ts.seconds % 86_400
            pool.append(_framed(order))
    return pool


def load_pool(
    orders: int = 100_000,
    *,
    seed: int = 5,
    duplicate_ratio: float = 0.01,
    invalid_ratio: float = 0.005,
    live: bool = True,
    cache_dir: Path = CACHE_DIR,
) -> list[bytes]:
    """The pool for these settings, from the cache when it was made before."""
    name = f"pool-{orders}-{seed}-{duplicate_ratio:g}-{invalid_ratio:g}-{'live' if live else 'olist'}.bin"
    path = cache_dir / name
    if path.exists():
        data = path.read_bytes()
        pool, at = [], 0
        while at < len(data):
            (n,) = _LENGTH.unpack_from(data, at)
            pool.append(data[at + 4 : at + 4 + n])
            at += 4 + n
        return pool
    pool = make_pool(orders, seed=seed, duplicate_ratio=duplicate_ratio, invalid_ratio=invalid_ratio, live=live)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(_LENGTH.pack(len(o)) + o for o in pool))
    tmp.rename(path)
    return pool


class BatchMaker:
    """Serialised `OrderBatch`es of `batch_size` orders from a pool, with fresh
    event_ids and batch_ids for every pass. `namespace` (0..4095, e.g. run and
    stream) keeps the ids of different streams and runs apart."""

    def __init__(self, pool: list[bytes], batch_size: int, source: str = "keystone-bench") -> None:
        self.batch_size = batch_size
        self.source = source.encode()
        # Chunks joined once; a pass only retags them.
        self.chunks = [
            (b"".join(pool[i : i + batch_size]), len(pool[i : i + batch_size]))
            for i in range(0, len(pool) - batch_size + 1, batch_size)
        ]
        if not self.chunks:
            raise ValueError(f"a pool of {len(pool)} orders cannot make a batch of {batch_size}")

    def batches(self, namespace: int) -> Iterator[tuple[str, bytes, int]]:
        """(batch_id, payload, orders) without end."""
        if not 0 <= namespace < 1 << 12:
            raise ValueError("namespace must be in 0..4095")
        for pass_ in range(1 << 20):
            tag = f"{namespace:03x}{pass_:05x}".encode()
            for k, (chunk, orders) in enumerate(self.chunks):
                batch_id = tag + b"-" + str(k).encode()
                header = b"\x0a" + _varint(len(batch_id)) + batch_id + b"\x12" + _varint(len(self.source)) + self.source
                yield batch_id.decode(), header + chunk.replace(PLACEHOLDER, tag), orders
        raise RuntimeError("pool passes exhausted")
