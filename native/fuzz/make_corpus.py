"""Writes the fuzzers' seed corpora: real OrderBatch bytes from the generator,
and Kafka record batches the native core built from them.

    python native/fuzz/make_corpus.py OUT_DIR [RECORDS_OUT_DIR]

Small batches (1 to 50 orders) with duplicates and invalid orders mixed in,
so the pipeline's fuzzer starts from inputs that reach every stage. The record
batches (every codec, orders and dead-letter records, one to three batches
back to back at the offsets a broker would give them) start the reader's and
the Bronze decoder's fuzzers, each behind a first byte of 1 (fix up the CRCs)
or 0.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from keystone_ingest.client.generator import OrderGenerator


def write_record_batches(out: Path, raws: list[bytes]) -> int:
    from keystone_ingest.core import Core, RecordBatchBuilder

    out.mkdir(parents=True, exist_ok=True)
    core = Core(dedup_max_keys=1)
    count = 0
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        for k, raw in enumerate(raws[:: max(1, len(raws) // 6)]):
            result = core.process(raw)
            batches = []
            for rejects in (False, True):
                builder = RecordBatchBuilder(codec, 0, 1 << 20)
                headers = [("batch_id", result.batch_id.encode()), ("source", b"fuzz")]
                if rejects:
                    builder.append_rejects(result, raw, 0, 1_700_000_000_000 + k, headers)
                else:
                    builder.append_orders(result, raw, 0, 1, 0, 1_700_000_000_000 + k, headers)
                if builder.record_count():
                    builder._set_producer_state(k, 0, k * 10)
                    # The base offset the broker would assign (outside the CRC), so
                    # batches back to back read as one partition's log.
                    offset = sum(n for _, n in batches)
                    batches.append((struct.pack(">q", offset) + builder._build()[8:], builder.record_count()))
            fetch = b"".join(batch for batch, _ in batches[: 1 + k % 3])
            (out / f"records-{count:03d}.bin").write_bytes(bytes([count & 1]) + fetch)
            count += 1
    return count


def main(out_dir: str, records_dir: str | None = None) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = OrderGenerator(seed=1234, duplicate_ratio=0.1, invalid_ratio=0.1)
    count = 0
    raws = []
    for size in (1, 1, 2, 3, 5, 8, 13, 21, 34, 50):
        for _ in range(3):
            raws.append(gen.batch(size).SerializeToString())
            (out / f"batch-{count:03d}.bin").write_bytes(raws[-1])
            count += 1
    print(f"wrote {count} seed batches to {out}")
    if records_dir is not None:
        print(f"wrote {write_record_batches(Path(records_dir), raws)} seed record batches to {records_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
