"""`keystone-ingest`: serve, bronze, load, replay.

    keystone-ingest serve [--listen 127.0.0.1:50051] [--kafka-bootstrap HOST:PORT] ...
    keystone-ingest bronze --kafka-bootstrap HOST:PORT --bronze-uri s3://lake/bronze
    keystone-ingest load --count 200000 --streams 4
    keystone-ingest replay --olist-dir ./olist

Every flag may also be given as an environment variable KEYSTONE_<FLAG>
(upper case, dashes as underscores), e.g. KEYSTONE_KAFKA_BOOTSTRAP.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from keystone_ingest.client.cli import add_subcommands
from keystone_ingest.server import logs
from keystone_ingest.server.config import ServeConfig, add_config_arguments, config_from_args


def _run(command: str, args: argparse.Namespace, config_cls: type, main) -> int:
    """Config from flags and environment (exit 2 naming a bad value), logging,
    then `main(config)` on an event loop; a start that fails (a sink, the
    listen address, an embedded broker) exits 1 with the reason, no traceback."""
    try:
        config = config_from_args(args, config_cls)
    except ValueError as exc:
        print(f"keystone-ingest {command}: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    from keystone_ingest.dev.embedded import StartFailed
    from keystone_ingest.server.errors import IngestError

    try:
        return asyncio.run(main(config)) or 0
    except (IngestError, OSError, StartFailed) as exc:
        logging.getLogger("keystone_ingest.server").error("cannot start", extra={"error": str(exc)})
        return 1


def _serve(args: argparse.Namespace) -> int:
    from keystone_ingest.server.app import serve

    return _run("serve", args, ServeConfig, serve)


def _bronze(args: argparse.Namespace) -> int:
    from keystone_ingest.server.bronze.config import BronzeWorkerConfig
    from keystone_ingest.server.bronze.worker import run_worker

    return _run("bronze", args, BronzeWorkerConfig, run_worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keystone-ingest",
        description="gRPC order ingestion: protobuf batches in, Kafka records and Bronze Parquet out.",
        epilog="Every flag may also be set as KEYSTONE_<FLAG>, e.g. KEYSTONE_KAFKA_BOOTSTRAP=broker:9092.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the ingestion server",
        description="Run the ingestion server. Without --kafka-bootstrap it starts an embedded Apache Kafka broker.",
    )
    add_config_arguments(serve, ServeConfig)
    serve.set_defaults(func=_serve)
    from keystone_ingest.server.bronze.config import BronzeWorkerConfig

    bronze = commands.add_parser(
        "bronze",
        help="run a Bronze worker: the orders topics as Parquet, exactly once",
        description="Consume the orders and dead-letter topics as a member of --bronze-group and write Bronze "
        "Parquet exactly once. Run any number of them; the group shares the partitions.",
    )
    add_config_arguments(bronze, BronzeWorkerConfig)
    bronze.set_defaults(func=_bronze)
    add_subcommands(commands)
    # `keystone-ingest --help` documents every flag of every command, so one
    # page answers "how do I set X" without knowing which command owns it.
    parser.epilog = "\n\n".join(
        [parser.epilog or ""]
        + [
            f"{'=' * 30} keystone-ingest {name} {'=' * 30}\n{sub.format_help()}"
            for name, sub in commands.choices.items()
        ]
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
