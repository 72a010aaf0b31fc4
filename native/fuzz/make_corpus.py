"""Writes the fuzzers' seed corpus: real OrderBatch bytes from the generator.

    python native/fuzz/make_corpus.py OUT_DIR

Small batches (1 to 50 orders) with duplicates and invalid orders mixed in,
so the fuzzer starts from inputs that reach every stage of the pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from keystone_ingest.client.generator import OrderGenerator


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = OrderGenerator(seed=1234, duplicate_ratio=0.1, invalid_ratio=0.1)
    count = 0
    for size in (1, 1, 2, 3, 5, 8, 13, 21, 34, 50):
        for _ in range(3):
            batch = gen.batch(size)
            (out / f"batch-{count:03d}.bin").write_bytes(batch.SerializeToString())
            count += 1
    print(f"wrote {count} seed batches to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
