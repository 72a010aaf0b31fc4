"""What operators rely on: health, reflection, metrics, configuration, the
embedded broker, graceful shutdown, S3 for Bronze. Tests of what the server
answers use a server in this process; tests of the process (its exit code,
signals, its Bronze child, the embedded broker, the CLI) start one."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from dataclasses import fields

import grpc
import pyarrow.dataset as ds
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kafkautil import KafkaCluster, read_all
from keystone_ingest.client.client import IngestClient, IngestRpcError, RetryPolicy
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.config import ServeConfig
from s3util import AWS_ENV, s3_server
from serverutil import catch_up_bronze, wait_bronze_caught_up
from waiting import wait_until


def health_status(target: str, service: str = "") -> str:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and line.split(" ")[0] == name):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_health_reflection_and_metrics_describe_a_serving_server(in_process):
    d = in_process("--metrics-listen", "127.0.0.1:0")
    assert health_status(d.target) == "SERVING"
    assert health_status(d.target, "keystone.ingest.v1.OrderIngest") == "SERVING"

    with grpc.insecure_channel(d.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (response,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for s in response.list_services_response.service}
    assert {"keystone.ingest.v1.OrderIngest", "grpc.health.v1.Health"} <= services

    gen = OrderGenerator(seed=3, invalid_ratio=0.1, duplicate_ratio=0.1)
    batch = gen.batch(100)
    with IngestClient(d.target) as client:
        ack = client.ingest(batch)
        again = client.ingest(batch)
    assert again.status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH
    assert ack.accepted > 0 and ack.duplicates > 0 and ack.rejected > 0  # each outcome's counter is exercised
    text = metrics_text(d.server.metrics_port)  # the /metrics endpoint, over HTTP
    assert metric(text, 'keystone_ingest_orders_total{outcome="accepted"}') == ack.accepted
    assert metric(text, 'keystone_ingest_orders_total{outcome="duplicate"}') == ack.duplicates
    assert metric(text, 'keystone_ingest_orders_total{outcome="rejected"}') == ack.rejected
    assert metric(text, 'keystone_ingest_batches_total{status="accepted"}') == 1
    assert metric(text, 'keystone_ingest_batches_total{status="duplicate_batch"}') == 1
    assert metric(text, "keystone_ingest_batch_seconds_count") == 2
    assert metric(text, "keystone_ingest_batches_in_flight") == 0
    assert metric(text, f'keystone_ingest_kafka_records_total{{topic="{d.topic}"}}') == ack.accepted
    assert metric(text, f'keystone_ingest_kafka_records_total{{topic="{d.dlq_topic}"}}') == ack.rejected
    assert metric(text, "keystone_ingest_kafka_send_seconds_count") >= 1


def test_the_bronze_worker_serve_runs_reports_what_it_wrote_in_metrics_of_its_own(deploy):
    # About serve's Bronze child process: its own /metrics port, from the ready file.
    d = deploy("--roll-age-s", "0.5")
    batch = OrderGenerator(seed=3, invalid_ratio=0.1, duplicate_ratio=0.1).batch(100)
    with IngestClient(d.target) as client:
        ack = client.ingest(batch)
    bronze_port = d.server.bronze_metrics_port

    def rows_in_files() -> float:
        try:
            return metric(metrics_text(bronze_port), 'keystone_bronze_rows_total{table="orders"}')
        except KeyError:
            return 0

    # Once every accepted row is in a visible file its counters say so, and it lags by nothing.
    wait_until(lambda: rows_in_files() == ack.accepted, 15, what=f"{ack.accepted} orders rows in Bronze files")
    d.wait_bronze()
    text = metrics_text(bronze_port)
    orders = ds.dataset(d.bronze / "orders", format="parquet", partitioning="hive")
    assert metric(text, 'keystone_bronze_files_total{table="orders"}') == len(orders.files)
    assert metric(text, 'keystone_bronze_bytes_total{table="orders"}') == sum(os.path.getsize(f) for f in orders.files)
    assert metric(text, f'keystone_bronze_records_total{{topic="{d.topic}"}}') == ack.accepted
    wait_until(
        lambda: all(
            metric(metrics_text(bronze_port), f'keystone_bronze_lag_records{{partition="{p}",topic="{d.topic}"}}') == 0
            for p in range(6)
        ),
        15,
        what="no lag on any partition",
    )
    assert orders.count_rows() == ack.accepted
    assert d.server.stop() == 0


def test_health_is_not_serving_while_kafka_is_unreachable(breakable_kafka: KafkaCluster, in_process):
    server = in_process(partitions=3, dlq_partitions=1)
    assert health_status(server.target) == "SERVING"
    breakable_kafka.stop_all()
    services = ("", "keystone.ingest.v1.OrderIngest")
    wait_until(
        lambda: [health_status(server.target, s) for s in services] == ["NOT_SERVING"] * 2,
        15,
        what="health NOT_SERVING, for the server and the service",
    )
    assert server.metric("keystone_ingest_kafka_available") == 0
    breakable_kafka.start_all()
    wait_until(
        lambda: [health_status(server.target, s) for s in services] == ["SERVING"] * 2, 30, what="health SERVING again"
    )
    batch = OrderGenerator(seed=1).batch(20)
    with IngestClient(server.target) as client:
        assert client.ingest(batch).accepted == 20
    wait_until(lambda: server.metric("keystone_ingest_kafka_available") == 1, 10, what="kafka_available back to 1")
    records = read_all(breakable_kafka.bootstrap, server.topic)
    assert sorted(r.value for r in records) == sorted(o.SerializeToString() for o in batch.orders)
    server.stop()


def test_without_kafka_bootstrap_the_server_runs_an_embedded_apache_kafka_that_keeps_its_data(tmp_path):
    kafka_dir = tmp_path / "kafka"
    args = ["--bronze-uri", f"file://{tmp_path / 'bronze'}", "--dev-kafka-dir", str(kafka_dir)]
    batches = [OrderGenerator(seed=2).batch(30), OrderGenerator(seed=3).batch(30)]
    for run, batch in enumerate(batches):
        with ServerProcess(args, env={"KEYSTONE_KAFKA_BOOTSTRAP": ""}) as server:
            banner = [r for r in server.log_records() if r.get("embedded_broker")]
            assert banner and banner[0]["level"] == "warning" and banner[0]["embedded_broker"] == "kafka"
            assert "EMBEDDED APACHE KAFKA broker (one node, no replication" in banner[0]["msg"]
            jvm = int((kafka_dir / "node-1" / "kafka.pid").read_text())
            assert b"kafka.Kafka" in pathlib.Path(f"/proc/{jvm}/cmdline").read_bytes()
            with IngestClient(server.target) as client:
                assert client.ingest(batch).accepted == 30
            # The second run finds the first run's records: the data is on disk.
            records = read_all(server.kafka_bootstrap, "orders")
            assert sorted(r.header("event_id") for r in records) == sorted(
                o.event_id.encode() for b in batches[: run + 1] for o in b.orders
            )
            assert server.stop() == 0
        wait_until(
            lambda pid=jvm: not os.path.exists(f"/proc/{pid}"), 10, what="the embedded broker gone with the server"
        )


def test_dev_broker_mock_runs_librdkafkas_mock_cluster_and_says_it_is_not_kafka(tmp_path):
    args = ["--bronze-uri", f"file://{tmp_path}", "--dev-broker", "mock"]
    with ServerProcess(args, env={"KEYSTONE_KAFKA_BOOTSTRAP": ""}) as server:
        banner = [r for r in server.log_records() if r.get("embedded_broker")]
        assert banner and banner[0]["embedded_broker"] == "mock" and "It is not Kafka" in banner[0]["msg"]
        assert "no Bronze worker runs" in banner[0]["msg"] and server.bronze_pid is None
        with IngestClient(server.target) as client:
            assert client.ingest(OrderGenerator(seed=2).batch(30)).accepted == 30
        assert len(read_all(server.kafka_bootstrap, "orders")) == 30
        assert server.stop() == 0


def test_without_the_kafka_jars_the_embedded_broker_fails_the_start_saying_what_is_missing(tmp_path):
    env = {**os.environ, "KEYSTONE_KAFKA_BOOTSTRAP": "", "KEYSTONE_KAFKA_LIBS": str(tmp_path / "nothing")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "keystone_ingest.server.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--bronze-uri",
            f"file://{tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 1
    last = json.loads(run.stderr.strip().splitlines()[-1])
    assert last["error"] == (
        f"cannot start the embedded kafka broker: no Apache Kafka jars in {tmp_path / 'nothing'}: run `make kafka` "
        "in the repository (needs Java 17+ and Maven), or set KEYSTONE_KAFKA_LIBS to a directory holding "
        "kafka_2.13-4.4.0.jar and its dependencies"
    )


def test_sigterm_mid_stream_acks_what_was_received_and_exits_zero(deploy):
    d = deploy("--roll-age-s", "600")
    gen = OrderGenerator(seed=8)
    acked: list[ingest_pb2.BatchAck] = []
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            with IngestClient(d.target, max_in_flight=4, retry=RetryPolicy(deadline_s=2.0)) as client:
                for _ in range(400):
                    acked.append(client.ingest(gen.batch(100)))
        except BaseException as exc:  # the server went away for good
            failure.append(exc)

    sender = threading.Thread(target=stream)
    sender.start()
    wait_until(lambda: len(acked) >= 5, 30, what="5 batches acked")
    assert d.server.stop(signal.SIGTERM) == 0
    sender.join(60)
    assert failure and isinstance(failure[0], IngestRpcError)
    # Every acked order is in Kafka, and in Bronze once a worker has caught up
    # (serve's own worker wrote what it had consumed when it stopped).
    acked_ids = {b for a in acked for b in [a.batch_id]}
    kafka = read_all(d.cluster.bootstrap, d.topic)
    assert {r.header("batch_id").decode() for r in kafka} >= acked_ids
    catch_up_bronze(d.cluster.bootstrap, d.topic, d.dlq_topic, f"file://{d.bronze}")
    bronze = ds.dataset(d.bronze / "orders", format="parquet", partitioning="hive").to_table()
    assert set(bronze["batch_id"].to_pylist()) >= acked_ids
    assert bronze.num_rows == len(set(bronze["event_id"].to_pylist()))  # no order twice
    records = d.server.log_records()
    assert records[-1]["msg"] == "stopped"


def test_bronze_goes_to_s3_through_the_endpoint_override(kafka_cluster: KafkaCluster, tmp_path, monkeypatch):
    for key, value in AWS_ENV.items():  # this process reads Bronze's commit log on S3 too
        monkeypatch.setenv(key, value)
    with s3_server() as s3:
        topic, dlq = kafka_cluster.new_topic("orders"), kafka_cluster.new_topic("dlq")
        with ServerProcess(
            [
                "--kafka-bootstrap",
                kafka_cluster.bootstrap,
                "--topic",
                topic,
                "--dlq-topic",
                dlq,
                "--bronze-uri",
                s3.uri("lake/bronze"),
                "--s3-endpoint-url",
                s3.endpoint_url,
                "--spool-dir",
                str(tmp_path / "spool"),
            ],
            env=AWS_ENV,
        ) as server:
            batch = OrderGenerator(seed=4, invalid_ratio=0.05).batch(200)
            with IngestClient(server.target) as client:
                ack = client.ingest(batch)
            wait_bronze_caught_up(
                kafka_cluster.bootstrap,
                [topic, dlq],
                s3.uri("lake/bronze"),
                endpoint_url=s3.endpoint_url,
                spool_dir=str(tmp_path / "spool"),
            )
            assert server.stop() == 0
        fs = s3.filesystem()
        orders = ds.dataset(f"{s3.bucket}/lake/bronze/orders", filesystem=fs, format="parquet", partitioning="hive")
        assert sorted(orders.to_table()["event_id"].to_pylist()) == sorted(
            o.event_id for i, o in enumerate(batch.orders) if i not in {e.index for e in ack.errors}
        )
        quarantine = ds.dataset(f"{s3.bucket}/lake/bronze/_quarantine", filesystem=fs, format="parquet")
        assert quarantine.count_rows() == ack.rejected > 0
        # Parquet files and the commit markers that say they are complete; no flush left pending.
        keys = s3.objects("lake/bronze")
        assert all(k.endswith(".parquet") or k.startswith("lake/bronze/_bronze/commits/") for k in keys), keys
        assert any(k.startswith("lake/bronze/_bronze/commits/") for k in keys)


def test_every_serve_flag_is_documented_with_its_environment_variable():
    out = subprocess.run(
        [sys.executable, "-m", "keystone_ingest.server.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flat = " ".join(out.split())
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in flat
        assert "KEYSTONE_" + f.name.upper() in flat
    top = subprocess.run(
        [sys.executable, "-m", "keystone_ingest.server.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(command in top for command in ("serve", "bronze", "load", "replay"))


def test_flags_come_from_the_environment_and_bad_values_are_named(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "keystone_ingest.server.cli", "serve"],
        env={**AWS_ENV, "PATH": "/usr/bin", "KEYSTONE_MAX_BATCH_BYTES": "lots"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "KEYSTONE_MAX_BATCH_BYTES='lots' is not a valid int" in bad.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "keystone_ingest.server.cli", "serve", "--roll-age-s", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "--roll-age-s must be positive, got 0.0" in bad.stderr


def test_the_budgets_default_to_shares_of_the_memory_limit_and_set_ones_are_kept():
    MiB = 1 << 20
    assert (ServeConfig().memory_limit_bytes, ServeConfig().max_bytes_in_flight) == (1024 * MiB, 64 * MiB)
    assert ServeConfig(memory_limit_bytes=400 * MiB).max_bytes_in_flight == 25 * MiB
    assert ServeConfig(memory_limit_bytes=0).max_bytes_in_flight == 64 * MiB  # no limit: the share of 1 GiB
    assert ServeConfig(memory_limit_bytes=MiB).max_bytes_in_flight == MiB
    assert ServeConfig(memory_limit_bytes=400 * MiB, max_bytes_in_flight=7 * MiB).max_bytes_in_flight == 7 * MiB


def test_an_unreachable_kafka_at_start_exits_1_with_the_reason(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "keystone_ingest.server.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--kafka-bootstrap",
            "127.0.0.1:1",
            "--bronze-uri",
            f"file://{tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    last = json.loads(run.stderr.strip().splitlines()[-1])
    assert last["msg"] == "cannot start"
    assert last["error"].startswith("cannot reach Kafka at 127.0.0.1:1 (topics orders, orders.dlq)")


def test_a_batch_kafka_could_not_take_is_not_acked_and_its_resend_is_accepted_in_full(
    breakable_kafka: KafkaCluster, in_process, tmp_path
):
    batch = OrderGenerator(seed=12, duplicate_ratio=0.1).batch(60)
    cluster = breakable_kafka
    server = in_process("--send-timeout-s", "1.5", partitions=3, dlq_partitions=1)
    cluster.stop_all()
    restart = threading.Thread(target=cluster.start_all)
    with IngestClient(server.target, retry=RetryPolicy(initial_backoff_s=0.5, deadline_s=90)) as client:
        future = client.send(batch)
        wait_until(lambda: client.stats.resends >= 1, 30, what="the first attempt failed UNAVAILABLE and was resent")
        restart.start()
        ack = future.result(timeout=90)
    restart.join()
    # The core forgot the failed attempt's orders and batch_id, so the
    # resend is processed in full, not as duplicates.
    assert ack.status == ingest_pb2.ACK_STATUS_ACCEPTED
    distinct = len({o.event_id for o in batch.orders})
    assert (ack.accepted, ack.duplicates) == (distinct, 60 - distinct)
    records = read_all(cluster.bootstrap, server.topic)
    # Records of the failed attempt may still reach Kafka (README: "when Kafka
    # can hold an order twice"): same event_id and bytes, so consumers drop them.
    by_event = {}
    for r in records:
        by_event.setdefault(r.header("event_id"), set()).add(r.value)
    assert len(by_event) == distinct and all(len(v) == 1 for v in by_event.values())
    assert server.metric("keystone_ingest_batches_total", status="error") >= 1
    assert server.metric("keystone_ingest_batches_total", status="accepted") == 1
    server.stop()
    server.catch_up_bronze(tmp_path)
    orders = ds.dataset(tmp_path / "orders", format="parquet", partitioning="hive").to_table()
    assert sorted(orders["event_id"].to_pylist()) == sorted({o.event_id for o in batch.orders})


def test_a_taken_listen_address_exits_1_before_any_sink_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "keystone_ingest.server.cli",
                "serve",
                "--listen",
                address,
                "--metrics-listen",
                "",
                "--bronze-uri",
                f"file://{tmp_path}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1
    last = json.loads(run.stderr.strip().splitlines()[-1])
    assert last["error"].startswith(f"cannot listen on {address}: Failed to bind")
    assert "embedded_broker" not in run.stderr  # nothing was started
