"""How the sinks authenticate: Kafka TLS/SASL/MSK IAM settings reaching
aiokafka, the MSK IAM token provider (real SigV4 signing from the AWS
credential chain, offline), and S3 objects written with SSE-KMS.

Handshakes with Apache Kafka's own SASL and TLS listeners are in
test_kafka_listeners.py; here: every setting reaches the producer aiokafka
builds, and the MSK IAM token is a presigned kafka-cluster:Connect request
made from the credential chain, fresh on every call (aiokafka calls the
provider on every new connection, which is how tokens are renewed: aiokafka
has no SASL re-authentication), sent on the wire to a stand-in for MSK."""

from __future__ import annotations

import asyncio
import base64
import urllib.parse

import pytest
from aiokafka import AIOKafkaProducer
from certs import TestCA
from kafkautil import KafkaCluster
from keystone_ingest.client.client import IngestClient
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.dev.launcher import ServerProcess
from keystone_ingest.server.config import ServeConfig
from keystone_ingest.server.sinks.kafka import KafkaConfig
from keystone_ingest.server.sinks.kafka.producer import new_producer
from keystone_ingest.server.sinks.kafka.security import KafkaSecurity, MskIamTokenProvider
from s3util import AWS_ENV, s3_server


def producer_of(security: KafkaSecurity) -> AIOKafkaProducer:
    async def build() -> AIOKafkaProducer:
        config = KafkaConfig(bootstrap="127.0.0.1:9", security=security)
        return new_producer(config, config.max_batch_bytes)

    return asyncio.run(build())


async def connect_once(broker, config: ServeConfig):
    """The sink's producer for `config` connects to the stand-in `broker` (TLS
    handshake, SASL authentication, metadata); then both stop. Returns the
    broker, which remembers the connections."""
    kafka = KafkaConfig(bootstrap=config.kafka_bootstrap, security=KafkaSecurity.from_config(config))
    producer = new_producer(kafka, kafka.max_batch_bytes)
    try:
        await producer.client.bootstrap()
    finally:
        await producer.stop()
        await broker.stop()
    return broker


def test_sasl_scram_over_tls_settings_reach_the_producer(tmp_path):
    ca = TestCA(tmp_path, "kafka-ca")
    client = ca.issue("keystone")
    config = ServeConfig(
        kafka_bootstrap="b-1:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="keystone",
        kafka_sasl_password="s3cret",
        kafka_ssl_ca=str(ca.cert),
        kafka_ssl_cert=str(client.cert),
        kafka_ssl_key=str(client.key),
    )
    producer = producer_of(KafkaSecurity.from_config(config))
    c = producer.client
    assert (c._security_protocol, c._sasl_mechanism, c._sasl_plain_username, c._sasl_plain_password) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "keystone",
        "s3cret",
    )
    assert c._ssl_context is not None and c._ssl_context.verify_mode.name == "CERT_REQUIRED"
    assert [cert["subject"] for cert in c._ssl_context.get_ca_certs()] == [
        ((("commonName", "keystone test CA kafka-ca"),),)
    ]


def test_plain_and_ssl_only_settings_reach_the_producer():
    plain = producer_of(
        KafkaSecurity.from_config(
            ServeConfig(
                kafka_bootstrap="b:9092",
                kafka_security_protocol="SASL_PLAINTEXT",
                kafka_sasl_mechanism="PLAIN",
                kafka_sasl_username="u",
                kafka_sasl_password="p",
            )
        )
    )
    assert (plain.client._security_protocol, plain.client._sasl_mechanism) == ("SASL_PLAINTEXT", "PLAIN")
    tls = producer_of(KafkaSecurity.from_config(ServeConfig(kafka_bootstrap="b:9094", kafka_security_protocol="SSL")))
    assert (tls.client._security_protocol, tls.client._sasl_mechanism) == ("SSL", "PLAIN")  # aiokafka's unused default
    assert tls.client._ssl_context is not None
    default = producer_of(KafkaSecurity.from_config(ServeConfig(kafka_bootstrap="b:9092")))
    assert default.client._security_protocol == "PLAINTEXT"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "--kafka-security-protocol SASL_SSL needs --kafka-sasl-mechanism"),
        (
            {"kafka_sasl_mechanism": "PLAIN"},
            "--kafka-sasl-mechanism PLAIN needs --kafka-security-protocol SASL_SSL (or SASL_PLAINTEXT)",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cert": "c.pem"},
            "--kafka-ssl-cert and --kafka-ssl-key go together",
        ),
        ({"kafka_ssl_ca": "ca.pem"}, "--kafka-ssl-ca/--kafka-ssl-cert need --kafka-security-protocol SSL or SASL_SSL"),
    ],
)
def test_kafka_security_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ValueError) as refused:
        ServeConfig(kafka_bootstrap="b:9092", **settings)
    assert str(refused.value) == message


def test_the_embedded_broker_refuses_kafka_security():
    with pytest.raises(ValueError) as refused:
        ServeConfig(kafka_security_protocol="SSL")
    assert str(refused.value) == "the embedded broker speaks PLAINTEXT only; set --kafka-bootstrap"


def test_msk_iam_uses_oauthbearer_with_a_fresh_presigned_token_from_the_credential_chain(monkeypatch):
    for key, value in {
        **AWS_ENV,
        "AWS_ACCESS_KEY_ID": "AKIAKEYSTONETEST",
        "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
    }.items():
        monkeypatch.setenv(key, value)
    config = ServeConfig(
        kafka_bootstrap="b-1.msk:9098",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="AWS_MSK_IAM",
        kafka_msk_region="eu-west-1",
    )
    security = KafkaSecurity.from_config(config)
    producer = producer_of(security)
    assert (producer.client._security_protocol, producer.client._sasl_mechanism) == ("SASL_SSL", "OAUTHBEARER")
    provider = producer.client._sasl_oauth_token_provider
    assert isinstance(provider, MskIamTokenProvider) and provider.region == "eu-west-1"

    async def two_connections() -> list[str]:  # aiokafka asks once per connection it opens
        return [await provider.token(), await provider.token()]

    tokens = asyncio.run(two_connections())
    assert provider.tokens_made == 2  # signed anew each time, never cached past its 15 minutes
    for token in tokens:
        url = urllib.parse.urlparse(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
        query = urllib.parse.parse_qs(url.query)
        assert (url.scheme, url.netloc) == ("https", "kafka.eu-west-1.amazonaws.com")
        assert query["Action"] == ["kafka-cluster:Connect"]
        assert query["X-Amz-Credential"][0].startswith("AKIAKEYSTONETEST/")
        assert query["X-Amz-Credential"][0].endswith("/eu-west-1/kafka-cluster/aws4_request")
        assert query["X-Amz-Expires"] == ["900"]
        assert "not-a-real-secret" not in base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def test_msk_iam_without_a_region_is_refused(monkeypatch):
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(ValueError) as refused:
        ServeConfig(kafka_bootstrap="b:9098", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="AWS_MSK_IAM")
    assert str(refused.value) == "--kafka-sasl-mechanism AWS_MSK_IAM needs a region: --kafka-msk-region or AWS_REGION"


def test_bronze_objects_are_written_with_sse_kms(kafka_cluster: KafkaCluster, tmp_path):
    with s3_server() as s3:
        with ServerProcess(
            [
                "--kafka-bootstrap",
                kafka_cluster.bootstrap,
                "--topic",
                kafka_cluster.new_topic("orders"),
                "--dlq-topic",
                kafka_cluster.new_topic("dlq"),
                "--bronze-uri",
                s3.uri("lake/bronze"),
                "--s3-endpoint-url",
                s3.endpoint_url,
                "--s3-sse-kms-key-id",
                "alias/keystone-bronze",
                "--spool-dir",
                str(tmp_path / "spool"),
            ],
            env=AWS_ENV,
        ) as server:
            with IngestClient(server.target) as client:
                assert client.ingest(OrderGenerator(seed=1).batch(50)).accepted == 50
            assert server.stop() == 0
        keys = list(s3.objects("lake/bronze"))
        assert keys
        for key in keys:
            head = s3.client().head_object(Bucket=s3.bucket, Key=key)
            assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "alias/keystone-bronze"), key


def test_msk_iam_tokens_go_on_the_wire_and_every_reconnect_authenticates_with_a_new_one(monkeypatch, caplog):
    """Against a broker that speaks SASL (a stand-in, fake_kafka.py): aiokafka,
    configured by the sink, authenticates each connection with OAUTHBEARER and
    a token from our provider before any other request; when the broker drops
    the connections (as MSK does when a token's session expires) the next
    request opens a new connection and authenticates again with a token
    signed anew."""
    from aiokafka.errors import KafkaConnectionError
    from aiokafka.protocol.metadata import MetadataRequest
    from fake_kafka import API_VERSIONS, METADATA, SASL_AUTHENTICATE, SASL_HANDSHAKE, FakeSaslBroker

    for key, value in {
        **AWS_ENV,
        "AWS_ACCESS_KEY_ID": "AKIAKEYSTONETEST",
        "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
    }.items():
        monkeypatch.setenv(key, value)

    async def scenario() -> tuple[FakeSaslBroker, MskIamTokenProvider]:
        broker = FakeSaslBroker()
        await broker.start()
        config = ServeConfig(
            kafka_bootstrap=f"127.0.0.1:{broker.port}",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="AWS_MSK_IAM",
            kafka_msk_region="eu-west-1",
        )
        kafka = KafkaConfig(bootstrap=config.kafka_bootstrap, security=KafkaSecurity.from_config(config))
        producer = new_producer(kafka, kafka.max_batch_bytes)
        client = producer.client
        try:
            await client.bootstrap()  # connection 1: bootstrap
            assert (await client.send(1, MetadataRequest([]))).brokers == [(1, "127.0.0.1", broker.port)]
            before = len(broker.connections)
            broker.drop_connections()  # the session expired
            for _ in range(2):  # the first request may still find the dropped connection
                try:
                    response = await client.send(1, MetadataRequest([]))
                    break
                except KafkaConnectionError:
                    continue
            assert response.brokers == [(1, "127.0.0.1", broker.port)]
            assert len(broker.connections) > before
        finally:
            await producer.stop()
            await broker.stop()
        return broker, client._sasl_oauth_token_provider

    with caplog.at_level("DEBUG"):
        broker, provider = asyncio.run(scenario())
    assert len(broker.connections) >= 3
    assert provider.tokens_made == len(broker.connections)
    for connection in broker.connections:
        assert connection.requests[:3] == [(API_VERSIONS, 0), (SASL_HANDSHAKE, 1), (SASL_AUTHENTICATE, 0)]
        assert all(key == METADATA for key, _ in connection.requests[3:])
        assert connection.mechanism == "OAUTHBEARER"
        # RFC 7628 initial client response: n,,^Aauth=Bearer <token>^A^A
        assert connection.auth_bytes.startswith(b"n,,\x01auth=Bearer ") and connection.auth_bytes.endswith(b"\x01\x01")
        token = connection.auth_bytes[len(b"n,,\x01auth=Bearer ") : -2].decode()
        url = urllib.parse.urlparse(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
        assert url.netloc == "kafka.eu-west-1.amazonaws.com"
        assert urllib.parse.parse_qs(url.query)["Action"] == ["kafka-cluster:Connect"]
        assert token not in caplog.text  # aiokafka's DEBUG request log is redacted
