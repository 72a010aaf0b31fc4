"""`python -m keystone_ingest.dev.kafka`: an Apache Kafka cluster in the foreground.

Prints one JSON line once every node is registered, e.g.
{"bootstrap": "127.0.0.1:40123,...", "nodes": {"1": 4711, ...}}, then runs until
SIGTERM or SIGINT and stops every node before exiting.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from keystone_ingest.dev.kafka.cluster import KafkaCluster, KafkaUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keystone_ingest.dev.kafka", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nodes", type=int, default=1, help="combined broker+controller nodes (3: replication 3, min ISR 2)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="keep the cluster's data here (default: a temporary directory)"
    )
    parser.add_argument(
        "--libs", default=None, help="the broker's jars (default: $KEYSTONE_KAFKA_LIBS or .cache/kafka/libs)"
    )
    parser.add_argument("--heap-mb", type=int, default=512, help="JVM heap of each node")
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic once ready (repeatable)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster = KafkaCluster(nodes=args.nodes, data_dir=args.data_dir, libs=args.libs, heap_mb=args.heap_mb)
        with cluster:
            for spec in args.topic:
                name, _, partitions = spec.partition(":")
                if name not in cluster.metadata().topics:
                    cluster.create_topic(name, partitions=int(partitions or 6))
            print(json.dumps({"bootstrap": cluster.bootstrap, "nodes": cluster.pids()}), flush=True)
            stop.wait()
    except KafkaUnavailable as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
