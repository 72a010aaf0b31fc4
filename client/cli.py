"""The client subcommands of `keystone-ingest`: `load` and `replay`.

The top-level parser belongs to the server's CLI, which calls
`add_subcommands(subparsers)`; each subcommand sets `func`, which takes the
parsed arguments and returns the process exit status:

    args = parser.parse_args()
    sys.exit(args.func(args))

Every flag can also be set with an environment variable `KEYSTONE_<FLAG>`
(upper case, dashes as underscores), e.g. `KEYSTONE_BATCH_SIZE=500`; a flag
on the command line wins. `add_argument_with_env` does this for any parser.

Exit status: 0 when every batch was acked; 1 when some were not (the error
distribution says why); 2 for bad flags or unreadable input; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from keystone_ingest.client.load import LoadOptions, LoadSummary, run_load
from keystone_ingest.client.replay import DEFAULT_TIMEZONE, OlistFormatError, ReplayOptions, RowProblem, run_replay

ENV_PREFIX = "KEYSTONE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_var(flag: str) -> str:
    """`--batch-size` -> `KEYSTONE_BATCH_SIZE`."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def add_argument_with_env(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    default: Any = None,
    secret: bool = False,
    **kwargs: Any,
) -> argparse.Action:
    """`parser.add_argument(flag, ...)` whose default comes from `KEYSTONE_<FLAG>` when set.

    The variable's text goes through the argument's `type` like a command-line
    value; for `store_true` flags it must be one of 1/0, true/false, yes/no,
    on/off. A required flag stops being required when its variable is set.
    The help gains "[env KEYSTONE_<FLAG>]" and the default, except for
    `secret` flags, whose values must never be printed.
    """
    name = env_var(flag)
    raw = os.environ.get(name)
    if raw is not None:
        if kwargs.get("action") == "store_true":
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                parser.error(f"{name}={raw!r}: expected one of {', '.join(sorted(_TRUE | _FALSE - {''}))}")
            default = lowered in _TRUE
        else:
            convert = kwargs.get("type") or str
            try:
                default = convert(raw)
            except (TypeError, ValueError):
                parser.error(f"{name}={raw!r} is not a valid {getattr(convert, '__name__', 'value')}")
        kwargs.pop("required", None)
    shown = "" if secret or default is None or kwargs.get("action") == "store_true" else " (default: %(default)s)"
    return parser.add_argument(flag, default=default, help=f"{help}{shown} [env {name}]", **kwargs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_sending_flags(parser: argparse.ArgumentParser, *, default_source: str) -> None:
    add_argument_with_env(
        parser,
        "--target",
        default="127.0.0.1:50051",
        help="server address host:port; replicas as host:port,host:port or dns:///name:port (spread, failover)",
    )
    add_argument_with_env(parser, "--batch-size", type=_positive_int, default=1000, help="orders per batch")
    add_argument_with_env(
        parser, "--streams", type=_positive_int, default=4, help="concurrent streams, each on its own connection"
    )
    add_argument_with_env(
        parser, "--max-in-flight", type=_positive_int, default=8, help="unacked batches per stream, at most"
    )
    add_argument_with_env(
        parser,
        "--rate",
        type=_non_negative_float,
        default=0.0,
        help="orders per second over all streams; 0 = as fast as possible",
    )
    add_argument_with_env(parser, "--source", default=default_source, help="OrderBatch.source of every batch")
    add_argument_with_env(
        parser,
        "--retry-deadline",
        type=_non_negative_float,
        default=60.0,
        help="seconds without any ack after a failure before unacked batches are given up",
    )
    add_argument_with_env(
        parser,
        "--ack-timeout",
        type=_non_negative_float,
        default=60.0,
        help="seconds a batch may wait for its ack before the stream is reopened and it is resent; 0 = no limit",
    )
    add_argument_with_env(parser, "--json", action="store_true", help="print the summary as JSON, and nothing else")
    add_argument_with_env(parser, "--no-progress", action="store_true", help="no live progress line on stderr")
    add_argument_with_env(
        parser, "--tls", action="store_true", help="connect with TLS (implied by --tls-ca and --tls-cert)"
    )
    add_argument_with_env(
        parser, "--tls-ca", metavar="PATH", help="CA certificates (PEM) to verify the server; unset: the system's"
    )
    add_argument_with_env(parser, "--tls-cert", metavar="PATH", help="client certificate (PEM) for mutual TLS")
    add_argument_with_env(parser, "--tls-key", metavar="PATH", help="private key (PEM) of --tls-cert")
    add_argument_with_env(
        parser, "--token-file", metavar="PATH", help="file holding the bearer token sent with every call"
    )
    add_argument_with_env(
        parser,
        "--token",
        metavar="SECRET",
        secret=True,
        help="bearer token sent with every call; prefer the environment variable or --token-file",
    )


def _transport(args: argparse.Namespace) -> dict:
    """credentials and metadata for LoadOptions / ReplayOptions from the TLS and token flags."""
    from keystone_ingest.client.security import bearer_metadata, channel_credentials, read_token_file

    options: dict = {}
    try:
        if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
            options["credentials"] = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        token = read_token_file(args.token_file) if args.token_file else args.token
        if token:
            options["metadata"] = bearer_metadata(token)
    except OSError as error:
        print(f"{args.command}: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return options


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Registers `load` and `replay` on the `keystone-ingest` parser's subparsers."""
    load = subparsers.add_parser(
        "load",
        help="stream synthetic Olist-like orders and print a latency and throughput summary",
        description="Stream synthetic orders (client/generator.py) at a server and summarise like ghz. "
        "Orders are generated before the clock starts. Give --count or --duration.",
    )
    _add_sending_flags(load, default_source="keystone-load")
    add_argument_with_env(
        load, "--count", type=_positive_int, help="orders to send (default 100000 without --duration)"
    )
    add_argument_with_env(load, "--duration", type=float, help="seconds to send for, instead of --count")
    add_argument_with_env(
        load,
        "--seed",
        type=int,
        help="generator seed; the same seed sends the same orders and batch ids (default: random)",
    )
    add_argument_with_env(
        load,
        "--duplicate-ratio",
        type=_non_negative_float,
        default=0.0,
        help="share of orders that repeat an earlier one",
    )
    add_argument_with_env(
        load,
        "--invalid-ratio",
        type=_non_negative_float,
        default=0.0,
        help="share of orders that break a validation rule",
    )
    load.set_defaults(func=_run_load)

    replay = subparsers.add_parser(
        "replay",
        help="stream the public Olist dataset's orders (CSV files) into the service",
        description="Join olist_orders_dataset.csv with its items, payments and customers and stream every order. "
        "Replaying again is idempotent (content-derived batch ids, event_id olist:<order_id>).",
    )
    add_argument_with_env(
        replay, "--olist-dir", type=Path, required=True, help="directory holding the Olist olist_*_dataset.csv files"
    )
    _add_sending_flags(replay, default_source="olist-replay")
    add_argument_with_env(replay, "--limit", type=_positive_int, help="send at most this many orders")
    add_argument_with_env(
        replay,
        "--timezone",
        default=DEFAULT_TIMEZONE,
        help="IANA zone of the dataset's wall-clock timestamps (UTC to take them as UTC)",
    )
    add_argument_with_env(
        replay,
        "--strict",
        action="store_true",
        help="stop at the first row that cannot be sent instead of skipping its order",
    )
    replay.set_defaults(func=_run_replay)


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _print_summary(summary: LoadSummary, as_json: bool) -> int:
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.format_text())
    return summary.exit_code


def _run_load(args: argparse.Namespace) -> int:
    if args.count is not None and args.duration is not None:
        print("load: give --count or --duration, not both (check KEYSTONE_COUNT / KEYSTONE_DURATION)", file=sys.stderr)
        return 2
    options = LoadOptions(
        target=args.target,
        rate=args.rate,
        duration_s=args.duration,
        count=args.count if args.count is not None else 100_000,
        batch_size=args.batch_size,
        streams=args.streams,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        duplicate_ratio=args.duplicate_ratio,
        invalid_ratio=args.invalid_ratio,
        source=args.source,
        progress=_show_progress(args),
        retry_deadline_s=args.retry_deadline,
        ack_timeout_s=args.ack_timeout or None,
        **_transport(args),
    )
    try:
        options.validate()
        summary = run_load(options)
    except ValueError as error:
        print(f"load: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return _print_summary(summary, args.json)


def _run_replay(args: argparse.Namespace) -> int:
    options = ReplayOptions(
        olist_dir=args.olist_dir,
        target=args.target,
        batch_size=args.batch_size,
        streams=args.streams,
        max_in_flight=args.max_in_flight,
        rate=args.rate,
        limit=args.limit,
        source=args.source,
        timezone=args.timezone,
        strict=args.strict,
        progress=_show_progress(args),
        retry_deadline_s=args.retry_deadline,
        ack_timeout_s=args.ack_timeout or None,
        **_transport(args),
    )
    try:
        summary = run_replay(options)
    except (OlistFormatError, RowProblem, ValueError, ZoneInfoNotFoundError) as error:
        print(f"replay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return _print_summary(summary, args.json)


def main(argv: list[str] | None = None) -> int:
    """`python -m keystone_ingest.client.cli load|replay ...`, for use without the server's CLI."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="keystone-ingest", description="Keystone Ingest client tools")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
