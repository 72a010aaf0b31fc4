"""Where the server listens, TLS, mutual TLS and certificate reload, with
certificates made by the tests; real server processes where a test reads the
server's log or exit status, a server in this process for the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest
from certs import TestCA
from kafkautil import read_all
from keystone_ingest.client.client import IngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.client.security import channel_credentials
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.proto.v1 import ingest_pb2
from secutil import UNARY_METHOD, presented_serial


def serve_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "keystone_ingest.server.cli", "serve", *args]


def unary(channel: grpc.Channel):
    return channel.unary_unary(
        UNARY_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
    )


def test_plaintext_on_a_non_loopback_address_is_refused_without_insecure(tmp_path):
    run = subprocess.run(
        serve_args("--listen", "0.0.0.0:0", "--bronze-uri", f"file://{tmp_path}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr == (
        "keystone-ingest serve: --listen 0.0.0.0:0 is not a loopback address: serve TLS (--tls-cert, --tls-key) "
        "or allow plaintext explicitly with --insecure\n"
    )


def test_insecure_allows_plaintext_on_any_address_with_a_warning(deploy):
    d = deploy("--listen", "0.0.0.0:0", "--insecure")
    warnings = [r for r in d.server.log_records() if r["level"] == "warning" and "PLAINTEXT" in r["msg"]]
    assert [(w["msg"], w["listen"]) for w in warnings] == [
        (
            "serving PLAINTEXT gRPC on a non-loopback address (--insecure): batches and tokens cross the network "
            "unencrypted",
            "0.0.0.0:0",
        )
    ]
    with IngestClient(d.target) as client:
        ack = client.ingest(OrderGenerator(seed=1).batch(10, batch_id="insecure-ok"))
    assert (ack.status, ack.accepted) == (ingest_pb2.ACK_STATUS_ACCEPTED, 10)


def test_the_default_listen_address_is_loopback():
    from keystone_ingest.server.config import ServeConfig

    assert ServeConfig().listen == "127.0.0.1:50051"
    assert ServeConfig(listen="[::1]:50051").listen_address == ("::1", 50051)
    with pytest.raises(ValueError, match="is not a loopback address"):
        ServeConfig(listen="ingest.internal:50051")


def test_tls_serves_clients_that_trust_the_ca_and_refuses_others(deploy, pki):
    server = pki["server"]
    d = deploy("--listen", "0.0.0.0:0", "--tls-cert", str(server.cert), "--tls-key", str(server.key))
    assert not [r for r in d.server.log_records() if "PLAINTEXT" in r["msg"]]
    security = [r for r in d.server.log_records() if r["msg"] == "transport security"]
    assert [(r["tls"], r["mutual_tls"], r["authentication"]) for r in security] == [(True, False, "none")]
    with IngestClient(d.target, credentials=channel_credentials(ca=str(pki["ca"].cert))) as client:
        ack = client.ingest(OrderGenerator(seed=2).batch(20, batch_id="over-tls"))
    assert (ack.status, ack.accepted) == (ingest_pb2.ACK_STATUS_ACCEPTED, 20)

    batch = OrderGenerator(seed=3).batch(5, batch_id="refused").SerializeToString()
    with grpc.insecure_channel(d.target) as plaintext:  # TLS server, plaintext client
        with pytest.raises(grpc.RpcError) as refused:
            unary(plaintext)(batch, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    untrusted = grpc.ssl_channel_credentials(root_certificates=pki["other_ca"].cert.read_bytes())
    with grpc.secure_channel(d.target, untrusted) as channel:  # a CA that did not sign the server's certificate
        with pytest.raises(grpc.RpcError) as refused:
            unary(channel)(batch, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_takes_only_clients_with_a_certificate_from_the_client_ca(in_process, pki):
    server, ca = pki["server"], pki["ca"]
    d = in_process("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-client-ca", str(ca.cert))
    batch = OrderGenerator(seed=4).batch(5, batch_id="mtls-refused").SerializeToString()
    for name, credentials in [
        ("no client certificate", channel_credentials(ca=str(ca.cert))),
        (
            "a certificate from another CA",
            channel_credentials(str(ca.cert), str(pki["stranger"].cert), str(pki["stranger"].key)),
        ),
    ]:
        with grpc.secure_channel(d.target, credentials) as channel, pytest.raises(grpc.RpcError) as refused:
            unary(channel)(batch, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name
    client = pki["client"]
    with IngestClient(d.target, credentials=channel_credentials(str(ca.cert), str(client.cert), str(client.key))) as c:
        ack = c.ingest(OrderGenerator(seed=5).batch(30, batch_id="mtls-ok"))
    assert (ack.status, ack.accepted) == (ingest_pb2.ACK_STATUS_ACCEPTED, 30)
    assert [r.header("batch_id") for r in read_all(d.cluster.bootstrap, d.topic)] == [b"mtls-ok"] * 30


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(deploy, pki, tmp_path):
    ca = pki["ca"]
    live = tmp_path / "live"
    live.mkdir()
    first = ca.issue("first", server=True, write_to=live / "server")
    d = deploy("--tls-cert", str(first.cert), "--tls-key", str(first.key))
    assert presented_serial(d.port, ca.cert) == first.serial
    # An open connection keeps working across the renewal.
    with IngestClient(d.target, credentials=channel_credentials(ca=str(ca.cert))) as client:
        assert client.ingest(OrderGenerator(seed=6).batch(3, batch_id="before-renewal")).accepted == 3

        # Renewal by a new CA: only the reloaded certificate verifies against it.
        new_ca = TestCA(tmp_path, "renewed-ca")
        renewed = new_ca.issue("renewed", server=True, write_to=live / "server")
        assert presented_serial(d.port, new_ca.cert) == renewed.serial
        assert client.ingest(OrderGenerator(seed=7).batch(3, batch_id="after-renewal")).accepted == 3
    with IngestClient(d.target, credentials=channel_credentials(ca=str(new_ca.cert))) as client:
        assert client.ingest(OrderGenerator(seed=8).batch(4, batch_id="new-ca")).accepted == 4
    reloads = [r for r in d.server.log_records() if r["msg"] == "TLS certificate reloaded"]
    assert len(reloads) == 1

    # A broken renewal (a key that is not the certificate's) keeps the current certificate.
    other = new_ca.issue("other", server=True)
    os.replace(other.key, live / "server-key.pem")
    assert presented_serial(d.port, new_ca.cert) == renewed.serial
    errors = [r for r in d.server.log_records() if r["msg"].startswith("TLS files changed but cannot be used")]
    assert len(errors) == 1
    assert "BEGIN" not in d.server.logs()  # no PEM in the logs


def test_bad_certificate_files_fail_the_start_with_the_paths_named(tmp_path, pki):
    server = pki["server"]
    with pytest.raises(RuntimeError) as failed:
        ServerProcess(
            ["--tls-cert", str(server.cert), "--tls-key", str(pki["client"].key), "--bronze-uri", f"file://{tmp_path}"],
            env={"KEYSTONE_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
        )
    assert "server exited with 1" in str(failed.value)
    record = [json.loads(line) for line in str(failed.value).splitlines() if line.startswith("{")][-1]
    assert record["msg"] == "cannot start"
    assert record["error"].startswith(
        f"--tls-cert {server.cert} and --tls-key {pki['client'].key} are not a certificate and its key ("
    )


def test_the_load_command_speaks_mutual_tls(in_process, pki):
    server, ca, client = pki["server"], pki["ca"], pki["client"]
    d = in_process("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-client-ca", str(ca.cert))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "keystone_ingest.server.cli",
            "load",
            "--target",
            f"localhost:{d.port}",
            "--count",
            "2000",
            "--batch-size",
            "500",
            "--streams",
            "2",
            "--json",
            "--no-progress",
            "--tls-ca",
            str(ca.cert),
            "--tls-cert",
            str(client.cert),
            "--tls-key",
            str(client.key),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert (summary["orders"], summary["accepted"], summary["errors"]) == (2000, 2000, {}), summary
    event_ids = {r.header("event_id") for r in read_all(d.cluster.bootstrap, d.topic)}
    assert len(event_ids) == 2000
