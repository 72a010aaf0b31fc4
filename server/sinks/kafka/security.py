"""How the Kafka sink authenticates to the brokers: TLS, SASL PLAIN and SCRAM,
and Amazon MSK IAM.

    security = KafkaSecurity.from_config(serve_config)
    AIOKafkaProducer(..., **security.client_kwargs())

MSK IAM is SASL OAUTHBEARER whose token is a SigV4-presigned request made by
aws-msk-iam-sasl-signer-python from the standard AWS credential chain
(environment, shared config, container or instance role). aiokafka asks the
token provider for a token every time it opens a connection, and the signer
makes a fresh one each time (valid 15 minutes, credentials refreshed by
botocore). aiokafka has no SASL re-authentication: when a token's session
expires, MSK closes the connection, and aiokafka reconnects (retrying what
was in flight) and authenticates again with a new token; the sink sees that as
a brief retriable error at most. The password and tokens are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiokafka.abc import AbstractTokenProvider

log = logging.getLogger(__name__)

MSK_IAM = "AWS_MSK_IAM"


class RedactSaslBytes(logging.Filter):
    """aiokafka logs every request and response at DEBUG, SaslAuthenticate
    included: its bytes are the PLAIN password, the SCRAM proof or the MSK
    token. This filter (on aiokafka's connection logger) replaces them, so
    `--log-level debug` does not print credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Sasl" not in str(record.msg) and not any("Sasl" in type(a).__name__ for a in record.args or ()):
            return True
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot be formatted is left to logging's own handling
            return True
        if "sasl_auth_bytes=" in text:
            record.msg = text.split("sasl_auth_bytes=", 1)[0] + "sasl_auth_bytes=<redacted>)"
            record.args = ()
        return True


_REDACT = RedactSaslBytes()
for _name in ("aiokafka.conn", "aiokafka"):
    if _REDACT not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_REDACT)


class MskIamTokenProvider(AbstractTokenProvider):
    """SASL OAUTHBEARER tokens for Amazon MSK IAM, one per connection."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.tokens_made = 0

    async def token(self) -> str:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        # Signing reads the credential chain, which may do I/O (a role's
        # metadata endpoint): off the event loop.
        token, _expiry_ms = await asyncio.to_thread(MSKAuthTokenProvider.generate_auth_token, self.region)
        self.tokens_made += 1
        return token


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    msk_region: str | None = None
    token_provider: AbstractTokenProvider | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_config(cls, c: Any) -> KafkaSecurity:
        provider = None
        if c.kafka_sasl_mechanism == MSK_IAM:
            provider = MskIamTokenProvider(msk_region(c))
        return cls(
            c.kafka_security_protocol,
            c.kafka_sasl_mechanism,
            c.kafka_sasl_username,
            c.kafka_sasl_password,
            c.kafka_ssl_ca,
            c.kafka_ssl_cert,
            c.kafka_ssl_key,
            c.kafka_msk_region,
            provider,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if "SSL" not in self.protocol:
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.ssl_ca, certfile=self.ssl_cert, keyfile=self.ssl_key)

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for AIOKafkaProducer and AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.sasl_mechanism == MSK_IAM:
            kwargs["sasl_mechanism"] = "OAUTHBEARER"
            kwargs["sasl_oauth_token_provider"] = self.token_provider
        elif self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs


def msk_region(c: Any) -> str:
    region = c.kafka_msk_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    import botocore.session

    region = botocore.session.get_session().get_config_variable("region")
    if not region:
        raise ValueError("--kafka-sasl-mechanism AWS_MSK_IAM needs a region: --kafka-msk-region or AWS_REGION")
    return region


def check_kafka_security(c: Any) -> None:
    """Raises ValueError for Kafka security settings that cannot work (never echoing a secret)."""
    sasl = c.kafka_security_protocol.startswith("SASL_")
    if sasl and not c.kafka_sasl_mechanism:
        raise ValueError(f"--kafka-security-protocol {c.kafka_security_protocol} needs --kafka-sasl-mechanism")
    if c.kafka_sasl_mechanism and not sasl:
        raise ValueError(
            f"--kafka-sasl-mechanism {c.kafka_sasl_mechanism} needs --kafka-security-protocol "
            f"SASL_SSL (or SASL_PLAINTEXT)"
        )
    if c.kafka_sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        if not c.kafka_sasl_username or not c.kafka_sasl_password:
            raise ValueError(
                f"--kafka-sasl-mechanism {c.kafka_sasl_mechanism} needs --kafka-sasl-username and "
                f"--kafka-sasl-password (or KEYSTONE_KAFKA_SASL_PASSWORD)"
            )
    if c.kafka_sasl_mechanism == MSK_IAM:
        msk_region(c)
    if (c.kafka_ssl_cert is None) != (c.kafka_ssl_key is None):
        raise ValueError("--kafka-ssl-cert and --kafka-ssl-key go together")
    if (c.kafka_ssl_ca or c.kafka_ssl_cert) and "SSL" not in c.kafka_security_protocol:
        raise ValueError("--kafka-ssl-ca/--kafka-ssl-cert need --kafka-security-protocol SSL or SASL_SSL")
    if c.kafka_bootstrap is None and c.kafka_security_protocol != "PLAINTEXT":
        raise ValueError("the embedded broker speaks PLAINTEXT only; set --kafka-bootstrap")
