"""The producer through Apache Kafka's own secured listeners (the session
cluster's `SASL`: SASL_PLAINTEXT with PLAIN and SCRAM-SHA-256/512, and
`SASL_SSL`: PLAIN over TLS with a client certificate required). Records are
read back over PLAINTEXT byte for byte; a wrong password and a missing client
certificate are refused at start with the reason; no credential reaches the
log, aiokafka's DEBUG request log included."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from kafkautil import KafkaCluster, KafkaSecrets, Record, read_all
from keystone_ingest.client.client import IngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.core import Core
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.server.batch import Batch
from keystone_ingest.server.config import ServeConfig
from keystone_ingest.server.errors import SinkFailed
from keystone_ingest.server.sinks.kafka import KafkaConfig, KafkaSink
from keystone_ingest.server.sinks.kafka.security import KafkaSecurity


def publish(cluster: KafkaCluster, config: ServeConfig, batch: Batch) -> list[Record]:
    """Publish `batch` with the sink configured like `serve` would be; read the topic back over PLAINTEXT."""
    topic, dlq = cluster.new_topic("secured", 3), cluster.new_topic("secured-dlq", 1)
    sink = KafkaSink(
        KafkaConfig(
            config.kafka_bootstrap,
            topic=topic,
            dlq_topic=dlq,
            start_timeout_s=20,
            security=KafkaSecurity.from_config(config),
        )
    )

    async def main() -> None:
        await sink.start()
        try:
            await sink.publish(batch)
        finally:
            await sink.stop()

    asyncio.run(main())
    return read_all(cluster.bootstrap, topic)


def batch_of(seed: int, orders: int = 40) -> Batch:
    raw = OrderGenerator(seed=seed).batch(orders).SerializeToString()
    return Batch(raw, Core().process(raw))


def sasl(cluster: KafkaCluster, secrets: KafkaSecrets, mechanism: str, password: str) -> ServeConfig:
    return ServeConfig(
        kafka_bootstrap=cluster.bootstrap_for("SASL"),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=secrets.user,
        kafka_sasl_password=password,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_the_producer_authenticates_on_a_sasl_listener_and_its_records_arrive_intact(
    kafka_cluster: KafkaCluster, kafka_secrets: KafkaSecrets, mechanism: str, caplog
):
    password = kafka_secrets.plain_password if mechanism == "PLAIN" else kafka_secrets.scram_password
    batch = batch_of(seed=700)
    with caplog.at_level("DEBUG"):
        records = publish(kafka_cluster, sasl(kafka_cluster, kafka_secrets, mechanism, password), batch)
    spans = batch.spans.to_pylist()
    expected = {
        o["event_id"]: (o["order_id"].encode(), batch.raw[s["offset"] : s["offset"] + s["length"]])
        for o, s in zip(batch.tables["orders"].to_pylist(), spans, strict=True)
    }
    assert len(records) == len(expected) == 40
    assert {r.header("event_id").decode(): (r.key, r.value) for r in records} == expected
    assert "DEBUG    aiokafka" in caplog.text  # aiokafka's request log was on
    assert password not in caplog.text


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_a_wrong_password_is_refused_at_start_and_said_so(
    kafka_cluster: KafkaCluster, kafka_secrets: KafkaSecrets, mechanism: str, caplog
):
    with caplog.at_level("DEBUG"), pytest.raises(SinkFailed) as refused:
        publish(kafka_cluster, sasl(kafka_cluster, kafka_secrets, mechanism, "not-the-password-31"), batch_of(701))
    first = kafka_cluster.bootstrap_for("SASL").split(",")[0]
    assert not refused.value.retriable
    # PLAIN: "Authentication failed: Invalid username or password"; SCRAM: "... due to invalid credentials ..."
    assert (
        f"a connection to {first} says SaslAuthenticationFailed: [Error 58] SaslAuthenticationFailed: "
        "Authentication failed"
    ) in refused.value.message
    assert "not-the-password-31" not in caplog.text and "not-the-password-31" not in refused.value.message


def serve_args(cluster: KafkaCluster, secrets: KafkaSecrets, tmp_path, with_certificate: bool = True) -> list[str]:
    args = [
        "--kafka-bootstrap",
        cluster.bootstrap_for("SASL_SSL"),
        "--kafka-security-protocol",
        "SASL_SSL",
        "--kafka-sasl-mechanism",
        "PLAIN",
        "--kafka-sasl-username",
        secrets.user,
        "--kafka-ssl-ca",
        str(secrets.ca),
        "--topic",
        cluster.new_topic("tls", 3),
        "--dlq-topic",
        cluster.new_topic("tls-dlq", 1),
        "--bronze-uri",
        f"file://{tmp_path / 'bronze'}",
    ]
    if with_certificate:
        args += ["--kafka-ssl-cert", str(secrets.client_cert), "--kafka-ssl-key", str(secrets.client_key)]
    return args


def test_the_server_ingests_through_a_tls_listener_that_requires_its_client_certificate(
    kafka_cluster: KafkaCluster, kafka_secrets: KafkaSecrets, tmp_path
):
    args = serve_args(kafka_cluster, kafka_secrets, tmp_path)
    batch = OrderGenerator(seed=702).batch(60)
    env = {"KEYSTONE_KAFKA_SASL_PASSWORD": kafka_secrets.plain_password}
    with ServerProcess(args, env=env) as server:
        with IngestClient(server.target) as client:
            assert client.ingest(batch).accepted == 60
        assert server.stop() == 0
        assert kafka_secrets.plain_password not in server.logs()
    records = read_all(kafka_cluster.bootstrap, args[args.index("--topic") + 1])
    sent = {o.event_id: o.SerializeToString() for o in batch.orders}
    assert {r.header("event_id").decode(): r.value for r in records} == sent


def test_without_a_client_certificate_the_tls_listener_refuses_and_the_server_exits_1_saying_why(
    kafka_cluster: KafkaCluster, kafka_secrets: KafkaSecrets, tmp_path
):
    args = serve_args(kafka_cluster, kafka_secrets, tmp_path, with_certificate=False)
    env = {**os.environ, "KEYSTONE_KAFKA_SASL_PASSWORD": kafka_secrets.plain_password}
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
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 1
    last = json.loads(run.stderr.strip().splitlines()[-1])
    assert last["msg"] == "cannot start"
    assert last["error"].startswith(f"cannot reach Kafka at {args[1]}")
    assert f"a connection to {args[1].split(',')[0]} says" in last["error"]
    assert kafka_secrets.plain_password not in run.stderr
