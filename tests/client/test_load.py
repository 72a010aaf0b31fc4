"""`keystone-ingest load` against the test peer of test_client.py: what it sends,
what its summary says, and its CLI (flags, environment, JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import replace

import grpc
import pytest
from keystone_ingest.client import cli, load
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.client.load import LoadOptions, run_load_async
from keystone_ingest.proto.v1 import ingest_pb2
from test_client import Fault, run, running_peer

SUMMARY_KEYS = {
    "target",
    "streams",
    "batch_size",
    "seed",
    "orders",
    "batches",
    "total_s",
    "orders_per_s",
    "batches_per_s",
    "latency_ms",
    "histogram",
    "statuses",
    "accepted",
    "duplicates",
    "rejected",
    "errors",
    "error_examples",
    "reconnects",
    "resends",
    "extra",
}


def received_ids(peer) -> list[str]:
    return [ingest_pb2.OrderBatch.FromString(raw).batch_id for raw in peer.received]


def test_count_run_sends_every_order_once_and_summarises_the_acks():
    async def body():
        async with running_peer() as peer:
            options = LoadOptions(target=peer.target, count=2500, batch_size=500, streams=2, seed=7)
            summary = await run_load_async(options)
        # 1250 orders per stream: batches of 500, 500 and 250.
        assert sorted(received_ids(peer)) == sorted(f"load-7-{s}-{k}" for s in (0, 1) for k in range(3))
        assert (summary.orders, summary.batches, summary.seed) == (2500, 6, 7)
        assert summary.statuses == {"ACCEPTED": 6, "DUPLICATE_BATCH": 0, "REJECTED": 0}
        assert (summary.accepted, summary.duplicates, summary.rejected) == (2500, 0, 0)
        assert summary.errors == {} and summary.exit_code == 0
        lat = summary.latency_ms
        assert 0 < lat["fastest"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["slowest"]
        assert lat["fastest"] <= lat["average"] <= lat["slowest"]
        assert len(summary.histogram) == 10 and sum(bucket["count"] for bucket in summary.histogram) == 6
        assert summary.histogram[-1]["le_ms"] == pytest.approx(lat["slowest"])
        assert summary.orders_per_s == pytest.approx(2500 / summary.total_s)

    run(body)


def test_stream_zero_sends_exactly_what_the_generator_makes_for_the_seed():
    async def body():
        async with running_peer() as peer:
            await run_load_async(
                LoadOptions(
                    target=peer.target,
                    count=300,
                    batch_size=100,
                    streams=1,
                    seed=11,
                    duplicate_ratio=0.05,
                    invalid_ratio=0.05,
                )
            )
        generator = OrderGenerator(11, duplicate_ratio=0.05, invalid_ratio=0.05)
        expected = [
            generator.batch(100, batch_id=f"load-11-0-{k}", source="keystone-load").SerializeToString()
            for k in range(3)
        ]
        assert peer.received == expected

    run(body)


def test_same_seed_again_resends_the_same_batches_and_gets_duplicate_batch_acks():
    async def body():
        async with running_peer() as peer:
            options = LoadOptions(target=peer.target, count=1000, batch_size=250, streams=2, seed=3)
            first = await run_load_async(options)
            second = await run_load_async(options)
        assert first.statuses["ACCEPTED"] == 4 and second.statuses == {
            "ACCEPTED": 0,
            "DUPLICATE_BATCH": 4,
            "REJECTED": 0,
        }
        assert sorted(peer.received[:4]) == sorted(peer.received[4:])

    run(body)


def test_generator_workers_make_the_same_batches_as_in_process_generation():
    async def body():
        async with running_peer() as peer:
            options = LoadOptions(target=peer.target, count=1200, batch_size=200, streams=2, seed=5)
            await run_load_async(options)
            in_process = sorted(peer.received)
            peer.received.clear()
            summary = await run_load_async(replace(options, parallel_generation_min_orders=1))
        assert sorted(peer.received) == in_process and len(in_process) == 6
        assert summary.statuses["DUPLICATE_BATCH"] == 6

    run(body, timeout_s=30)


def test_duration_run_paced_by_rate_sends_fresh_batches_for_its_duration():
    async def body():
        async with running_peer() as peer:
            options = LoadOptions(target=peer.target, duration_s=1.0, rate=2000, batch_size=100, streams=2, seed=9)
            summary = await run_load_async(options)
        ids = received_ids(peer)
        # 1000 orders/s per stream in batches of 100: a batch every 0.1 s, from t=0 to t<1 s.
        assert 18 <= summary.batches <= 20 and summary.orders == 100 * summary.batches
        assert len(set(ids)) == len(ids) == summary.batches
        assert summary.statuses["ACCEPTED"] == summary.batches and summary.exit_code == 0
        assert 0.9 <= summary.total_s < 2.0
        events = [order.event_id for raw in peer.received for order in ingest_pb2.OrderBatch.FromString(raw).orders]
        assert len(set(events)) == len(events)

    run(body, timeout_s=30)


def test_rate_spreads_a_count_run_over_time():
    async def body():
        async with running_peer() as peer:
            summary = await run_load_async(
                LoadOptions(target=peer.target, count=1000, batch_size=100, streams=2, rate=2000, seed=1)
            )
        # The last batch of each stream is due at 400 / 1000 orders/s = 0.4 s.
        assert 0.4 <= summary.total_s < 1.5 and summary.orders == 1000

    run(body)


def test_batches_that_fail_are_counted_per_status_and_the_exit_code_is_1():
    async def body():
        async with running_peer() as peer:
            peer.fault = Fault(after=1, code=grpc.StatusCode.PERMISSION_DENIED, details="no", sticky=True)
            options = LoadOptions(target=peer.target, count=400, batch_size=100, streams=1, seed=1)
            summary = await run_load_async(options)
        assert summary.errors == {"PERMISSION_DENIED": 4} and summary.exit_code == 1
        assert summary.error_examples == {"PERMISSION_DENIED": "PERMISSION_DENIED: no"}
        assert summary.statuses["ACCEPTED"] == 0 and summary.latency_ms["p99"] == 0.0
        text = summary.format_text()
        assert "Error distribution:\n  [4]\tPERMISSION_DENIED: PERMISSION_DENIED: no" in text

    run(body)


def test_text_summary_reads_like_ghz():
    async def body():
        async with running_peer() as peer:
            options = LoadOptions(target=peer.target, count=300, batch_size=100, streams=1, seed=2)
            summary = await run_load_async(options)
        text = summary.format_text()
        assert text.startswith(f"Summary:\n  Target:\t{peer.target} (1 streams, 100 orders/batch, seed 2)\n")
        assert "  Count:\t300 orders in 3 batches\n" in text
        for line in (
            "  Orders/sec:\t",
            "Ack latency histogram (ms per batch):",
            "  50 % in ",
            "  99 % in ",
            "Status distribution:\n  [ACCEPTED]\t3 batches\n  [DUPLICATE_BATCH]\t0 batches\n  [REJECTED]\t0 batches",
            "  accepted 300, duplicates 0, rejected 0",
        ):
            assert line in text
        assert "Error distribution" not in text

    run(body)


def test_histogram_buckets_are_equal_width_from_fastest_to_slowest():
    histogram = load.histogram([1.0, 1.5, 2.0, 10.0, 11.0])
    assert [bucket["le_ms"] for bucket in histogram] == pytest.approx([2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert [bucket["count"] for bucket in histogram] == [3, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    stats = load.latency_stats([float(v) for v in range(1, 101)])
    assert (stats["p50"], stats["p90"], stats["p99"], stats["average"]) == (50, 90, 99, 50.5)
    assert load.histogram([]) == []


# -- the CLI --------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """Runs the CLI from a thread (it starts its own event loop) while the peer serves on this one."""
    return asyncio.to_thread(cli.main, argv)


def test_cli_json_prints_the_summary_as_json_only(capsys):
    async def body():
        async with running_peer() as peer:
            status = await run_cli(
                [
                    "load",
                    "--target",
                    peer.target,
                    "--count",
                    "1000",
                    "--batch-size",
                    "250",
                    "--streams",
                    "2",
                    "--seed",
                    "4",
                    "--duplicate-ratio",
                    "0.1",
                    "--json",
                    "--no-progress",
                ]
            )
        summary = json.loads(capsys.readouterr().out)
        assert status == 0
        assert set(summary) == SUMMARY_KEYS
        assert set(summary["latency_ms"]) == {"average", "fastest", "slowest", "p50", "p90", "p95", "p99"}
        assert (summary["orders"], summary["batches"], summary["streams"], summary["seed"]) == (1000, 4, 2, 4)
        assert summary["statuses"] == {"ACCEPTED": 4, "DUPLICATE_BATCH": 0, "REJECTED": 0}
        assert summary["accepted"] == 1000 and summary["errors"] == {}
        assert all(set(bucket) == {"le_ms", "count"} for bucket in summary["histogram"])
        # --duplicate-ratio reached the generator: some orders repeat an earlier event_id.
        events = [order.event_id for raw in peer.received for order in ingest_pb2.OrderBatch.FromString(raw).orders]
        assert 50 <= len(events) - len(set(events)) <= 150

    run(body)


def test_cli_flags_come_from_keystone_environment_variables(capsys, monkeypatch):
    async def body():
        async with running_peer() as peer:
            monkeypatch.setenv("KEYSTONE_TARGET", peer.target)
            monkeypatch.setenv("KEYSTONE_COUNT", "600")
            monkeypatch.setenv("KEYSTONE_BATCH_SIZE", "200")
            monkeypatch.setenv("KEYSTONE_STREAMS", "1")
            monkeypatch.setenv("KEYSTONE_SOURCE", "from-env")
            monkeypatch.setenv("KEYSTONE_JSON", "true")
            monkeypatch.setenv("KEYSTONE_NO_PROGRESS", "1")
            status = await run_cli(["load", "--seed", "1", "--batch-size", "300"])  # the command line wins
        summary = json.loads(capsys.readouterr().out)
        assert status == 0 and (summary["orders"], summary["batches"], summary["batch_size"]) == (600, 2, 300)
        assert {ingest_pb2.OrderBatch.FromString(raw).source for raw in peer.received} == {"from-env"}

    run(body)


def test_cli_exit_status_is_1_when_batches_fail_and_2_for_bad_flags(capsys):
    async def body():
        async with running_peer() as peer:
            peer.fault = Fault(after=1, code=grpc.StatusCode.UNAUTHENTICATED, details="who", sticky=True)
            failed = await run_cli(
                ["load", "--target", peer.target, "--count", "10", "--streams", "1", "--no-progress"]
            )
        assert failed == 1
        assert "Error distribution:\n  [1]\tUNAUTHENTICATED: UNAUTHENTICATED: who" in capsys.readouterr().out
        both = await run_cli(["load", "--count", "10", "--duration", "1", "--no-progress"])
        assert both == 2 and "give --count or --duration, not both" in capsys.readouterr().err
        ratios = await run_cli(["load", "--duplicate-ratio", "0.7", "--invalid-ratio", "0.7", "--no-progress"])
        assert ratios == 2 and "sum to at most 1" in capsys.readouterr().err

    run(body)


def test_env_helper_documents_the_variable_and_parses_booleans(monkeypatch):
    monkeypatch.setenv("KEYSTONE_DRY_RUN", "off")
    monkeypatch.setenv("KEYSTONE_WORKERS", "3")
    parser = argparse.ArgumentParser()
    cli.add_argument_with_env(parser, "--dry-run", action="store_true", help="do nothing")
    cli.add_argument_with_env(parser, "--workers", type=int, default=1, help="worker count")
    cli.add_argument_with_env(parser, "--token", default="s3cret", secret=True, help="bearer token")
    assert parser.parse_args([]) == argparse.Namespace(dry_run=False, workers=3, token="s3cret")
    assert parser.parse_args(["--dry-run", "--workers", "5"]).workers == 5
    help_text = " ".join(parser.format_help().split())
    assert "worker count (default: 3) [env KEYSTONE_WORKERS]" in help_text
    assert "bearer token [env KEYSTONE_TOKEN]" in help_text and "s3cret" not in help_text
    monkeypatch.setenv("KEYSTONE_DRY_RUN", "maybe")
    with pytest.raises(SystemExit):
        cli.add_argument_with_env(argparse.ArgumentParser(), "--dry-run", action="store_true", help="x")


def test_subcommands_register_on_the_servers_parser(capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="keystone-ingest")
    cli.add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["load", "--duration", "5", "--rate", "1000"])
    assert (args.duration, args.rate, args.count, args.streams) == (5.0, 1000.0, None, 4)
    # Each command runs its own code: seen in how it refuses a mistake it checks before sending anything.
    args = parser.parse_args(["load", "--count", "5", "--duration", "5"])
    assert args.func(args) == 2
    assert capsys.readouterr().err == (
        "load: give --count or --duration, not both (check KEYSTONE_COUNT / KEYSTONE_DURATION)\n"
    )
    missing = tmp_path / "olist"
    args = parser.parse_args(["replay", "--olist-dir", str(missing), "--limit", "10"])
    assert args.olist_dir == missing and args.limit == 10
    assert args.func(args) == 2
    assert capsys.readouterr().err == f"replay: {missing}/olist_order_items_dataset.csv: file not found\n"
