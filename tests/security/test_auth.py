"""Bearer-token authentication against a real server: UNAUTHENTICATED,
PERMISSION_DENIED, the caller's name in Kafka headers and Bronze lineage,
tokens-file reload, and secrets kept out of logs, errors and --help. The tests
that read the server's log run it as a process; the others in this process."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pyarrow.dataset as ds
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kafkautil import read_all
from keystone_ingest.client.client import IngestClient, IngestRpcError
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.client.security import bearer_metadata
from keystone_ingest.proto.v1 import ingest_pb2
from keystone_ingest.server.security.auth import TokensFileError, parse_tokens, token_digest
from secutil import STREAM_METHOD, TOKENS, UNARY_METHOD, tokens_file_text

UNAUTHENTICATED = "a valid bearer token is required: send 'authorization: Bearer <token>'"


def unary(channel: grpc.Channel):
    return channel.unary_unary(
        UNARY_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
    )


def stream(channel: grpc.Channel):
    return channel.stream_stream(
        STREAM_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
    )


@pytest.fixture
def tokens_path(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(tokens_file_text())
    return path


def test_calls_without_a_valid_token_are_unauthenticated_and_callers_without_ingest_are_denied(deploy, tokens_path):
    d = deploy("--auth-tokens-file", str(tokens_path))
    batch = OrderGenerator(seed=1).batch(5, batch_id="auth-1").SerializeToString()
    with grpc.insecure_channel(d.target) as channel:
        for metadata in [
            None,
            [("authorization", "Bearer not-a-token")],
            [("authorization", f"Basic {TOKENS['checkout-api']}")],
            [("authorization", "Bearer ")],
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                unary(channel)(batch, metadata=metadata, timeout=10)
            assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            with pytest.raises(grpc.RpcError) as refused:
                list(stream(channel)(iter([batch]), metadata=metadata, timeout=10))
            assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)

        auditor = bearer_metadata(TOKENS["auditor"])
        for call in (
            lambda: unary(channel)(batch, metadata=auditor, timeout=10),
            lambda: list(stream(channel)(iter([batch]), metadata=auditor, timeout=10)),
        ):
            with pytest.raises(grpc.RpcError) as denied:
                call()
            assert (denied.value.code(), denied.value.details()) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "caller auditor may not ingest orders",
            )

        # Health needs no token (load balancers); reflection does.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        with pytest.raises(grpc.RpcError) as refused:
            list(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        answers = list(
            reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=auditor, timeout=10)
        )
        assert "keystone.ingest.v1.OrderIngest" in {s.name for s in answers[0].list_services_response.service}

        # Nothing of the refused batch went anywhere: the same batch_id is new to the server.
        ack = unary(channel)(batch, metadata=bearer_metadata(TOKENS["checkout-api"]), timeout=30)
        assert (ack.status, ack.accepted) == (ingest_pb2.ACK_STATUS_ACCEPTED, 5)

    # The client library does not retry an authentication failure: it fails the batch.
    with IngestClient(d.target, metadata=bearer_metadata("wrong")) as client:
        with pytest.raises(IngestRpcError) as failed:
            client.ingest(OrderGenerator(seed=2).batch(3))
    assert (failed.value.code, failed.value.details) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
    logs = d.server.logs()
    for token in TOKENS.values():
        assert token not in logs
    assert "not-a-token" not in logs


def test_the_authenticated_caller_is_the_producer_in_kafka_headers_and_bronze_beside_source(
    in_process, tokens_path, tmp_path
):
    d = in_process("--auth-tokens-file", str(tokens_path))
    gen = OrderGenerator(seed=3, invalid_ratio=0.1)
    sent = {}
    for caller, source in (("checkout-api", "claims-to-be-backfill"), ("backfill-job", "backfill")):
        with IngestClient(d.target, metadata=bearer_metadata(TOKENS[caller]), source=source) as client:
            batch = gen.batch(50, batch_id=f"from-{caller}", source=source)
            ack = client.ingest(batch)
            assert ack.status == ingest_pb2.ACK_STATUS_ACCEPTED
            sent[batch.batch_id] = (caller, source, ack)
    d.stop()
    bronze = tmp_path / "bronze"
    d.catch_up_bronze(bronze)

    records = read_all(d.cluster.bootstrap, d.topic)
    dlq = read_all(d.cluster.bootstrap, d.dlq_topic)
    for batch_id, (caller, source, ack) in sent.items():
        mine = [r for r in records if r.header("batch_id") == batch_id.encode()]
        assert len(mine) == ack.accepted > 0
        assert {(r.header("producer"), r.header("source")) for r in mine} == {(caller.encode(), source.encode())}
        rejected = [r for r in dlq if r.header("batch_id") == batch_id.encode()]
        assert len(rejected) == ack.rejected > 0
        assert {(r.header("producer"), r.header("source")) for r in rejected} == {(caller.encode(), source.encode())}

    for table in ("orders", "order_items", "order_payments", "customers", "_quarantine"):
        rows = ds.dataset(bronze / table, format="parquet", partitioning="hive").to_table()
        lineage = {
            (r["batch_id"], r["producer"], r["source"])
            for r in rows.select(["batch_id", "producer", "source"]).to_pylist()
        }
        assert lineage == {(b, caller, source) for b, (caller, source, _) in sent.items()}, table


def test_without_authentication_the_producer_is_null_and_there_is_no_producer_header(in_process, tmp_path):
    d = in_process()
    batch = OrderGenerator(seed=4).batch(10, batch_id="anonymous", source="someone")
    with IngestClient(d.target) as client:
        ack = client.ingest(batch)
    assert ack.accepted == 10
    d.stop()
    bronze = tmp_path / "bronze"
    d.catch_up_bronze(bronze)
    records = read_all(d.cluster.bootstrap, d.topic)
    assert sorted(r.value for r in records) == sorted(o.SerializeToString() for o in batch.orders)
    assert {(r.header("producer"), r.header("source")) for r in records} == {(None, b"someone")}
    rows = ds.dataset(bronze / "orders", format="parquet", partitioning="hive").to_table()
    assert set(rows["producer"].to_pylist()) == {None}
    assert set(rows["source"].to_pylist()) == {"someone"}


def test_a_changed_tokens_file_is_used_without_a_restart_and_a_broken_one_is_not(deploy, tokens_path):
    d = deploy("--auth-tokens-file", str(tokens_path))
    newcomer = "tok-newcomer-9c0b11"
    batch = OrderGenerator(seed=5).batch(4, batch_id="reload-1").SerializeToString()
    with grpc.insecure_channel(d.target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            unary(channel)(batch, metadata=bearer_metadata(newcomer), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # Add the newcomer, revoke checkout-api (rename into place, as a deploy would).
        staged = tokens_path.with_name("tokens.new")
        staged.write_text(
            tokens_file_text({"newcomer": newcomer, "backfill-job": TOKENS["backfill-job"]}, no_ingest=())
        )
        os.replace(staged, tokens_path)
        assert unary(channel)(batch, metadata=bearer_metadata(newcomer), timeout=30).accepted == 4
        with pytest.raises(grpc.RpcError) as refused:
            unary(channel)(batch, metadata=bearer_metadata(TOKENS["checkout-api"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # A broken file: logged (line number, no token), the previous callers stay.
        staged.write_text(f"newcomer ingest sha256:{token_digest(newcomer)}\nbroken line\n")
        os.replace(staged, tokens_path)
        ack = unary(channel)(
            OrderGenerator(seed=6).batch(2, batch_id="reload-2").SerializeToString(),
            metadata=bearer_metadata(newcomer),
            timeout=30,
        )
        assert ack.accepted == 2
    errors = [r for r in d.server.log_records() if r["msg"].startswith("tokens file changed but cannot be used")]
    assert [e["error"] for e in errors] == [f"{tokens_path}:2: expected 'NAME PERMISSIONS sha256:HEX', got 2 fields"]
    assert newcomer not in d.server.logs()


def test_tokens_file_errors_name_the_line_and_never_the_token():
    digest = token_digest("secret-token")
    assert parse_tokens(f"# comment\n\napi ingest sha256:{digest}  # trailing\n")[digest].name == "api"
    cases = {
        f"api ingest sha256:{digest}\napi ingest sha256:{token_digest('x')}": "f:2: caller api appears twice",
        f"api ingest,admin sha256:{digest}": "f:1: unknown permission 'admin' (known: ingest, or -)",
        "api ingest secret-token": "f:1: the third field must be sha256: and 64 hex digits",
        f"api/x ingest sha256:{digest}": "f:1: caller name must be 1 to 64 of A-Z a-z 0-9 . _ - @",
        f"a ingest sha256:{digest}\nb - sha256:{digest}": "f:2: the same token hash as caller a",
    }
    for text, message in cases.items():
        with pytest.raises(TokensFileError) as bad:
            parse_tokens(text, "f")
        assert str(bad.value) == message


def test_secrets_do_not_appear_in_help_or_configuration_errors(tmp_path):
    env = {**os.environ, "KEYSTONE_KAFKA_SASL_PASSWORD": "hunter2-very-secret", "KEYSTONE_TOKEN": "tok-in-env-secret"}
    for command in ("serve", "load", "replay"):
        out = subprocess.run(
            [sys.executable, "-m", "keystone_ingest.server.cli", command, "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        assert "hunter2-very-secret" not in out and "tok-in-env-secret" not in out
    top = subprocess.run(
        [sys.executable, "-m", "keystone_ingest.server.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "hunter2-very-secret" not in top and "tok-in-env-secret" not in top
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "keystone_ingest.server.cli",
            "serve",
            "--kafka-bootstrap",
            "127.0.0.1:1",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--bronze-uri",
            f"file://{tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr == (
        "keystone-ingest serve: --kafka-sasl-mechanism SCRAM-SHA-512 needs --kafka-sasl-username and "
        "--kafka-sasl-password (or KEYSTONE_KAFKA_SASL_PASSWORD)\n"
    )
    from keystone_ingest.server.config import ServeConfig

    config = ServeConfig(
        kafka_bootstrap="b:9092",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="hunter2-very-secret",
    )
    assert "hunter2" not in repr(config)
    from keystone_ingest.server.sinks.kafka.security import KafkaSecurity

    assert "hunter2" not in repr(KafkaSecurity.from_config(config))
