"""The server's security settings in one place: where it may listen, TLS,
who is calling, and the per-connection and per-caller limits.

    check_config(config)                 # at config validation: refuse unsafe combinations
    setup = ServerSecurity(config)       # loads certificates and tokens (bad files: refused at start)
    server = grpc.aio.server(options=[... , *setup.grpc_options()], interceptors=setup.interceptors())
    port = setup.add_port(server, "0.0.0.0:50051")
    gate = setup.gate                    # handed to the service: caller names, permissions, quotas

Safe by default: without TLS the server listens on loopback addresses only;
another address needs `--insecure`, which is logged as a warning at start.
Bearer tokens over plaintext would be readable on the network, so
authentication alone does not lift that rule: TLS does.

Calls to the health service need no token (load balancers probe it); every
other call (the ingest service, reflection) needs a valid one when a tokens
file is configured: none or an unknown one is UNAUTHENTICATED, a caller
without the `ingest` permission gets PERMISSION_DENIED on the ingest methods.
Neither answer says anything about the token that was sent.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

import grpc
from keystone_ingest.server.errors import IngestError, PermissionDenied, Unauthenticated
from keystone_ingest.server.security.auth import Caller, TokensFile, TokensFileError, bearer_token
from keystone_ingest.server.security.quotas import CallerQuotas
from keystone_ingest.server.security.tls import ServerTls, TlsConfigError

if TYPE_CHECKING:
    from keystone_ingest.server.config import ServeConfig

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
INGEST_PERMISSION = "ingest"


UNAUTHENTICATED_MESSAGE = "a valid bearer token is required: send 'authorization: Bearer <token>'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve anywhere


def check_config(c: ServeConfig) -> None:
    """Raises ValueError for settings that cannot work or would be unsafe."""
    for name in (
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "auth_tokens_file",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_ca",
        "kafka_ssl_cert",
        "kafka_ssl_key",
        "kafka_msk_region",
        "s3_sse_kms_key_id",
    ):
        if getattr(c, name) == "":
            setattr(c, name, None)
    if (c.tls_cert is None) != (c.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if c.tls_client_ca and not c.tls_cert:
        raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    host = c.listen.rpartition(":")[0].strip("[]")
    if not c.tls_cert and not c.insecure and not is_loopback(host):
        raise ValueError(
            f"--listen {c.listen} is not a loopback address: serve TLS (--tls-cert, --tls-key) "
            f"or allow plaintext explicitly with --insecure"
        )
    for name in (
        "max_orders_per_batch",
        "max_streams_per_connection",
        "max_streams_per_caller",
        "caller_burst_batches",
    ):
        if getattr(c, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
    if c.caller_rate_batches_s < 0:
        raise ValueError(f"--caller-rate-batches-s must not be negative, got {c.caller_rate_batches_s}")
    for name in ("keepalive_time_s", "keepalive_timeout_s", "min_client_ping_interval_s"):
        if getattr(c, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(c, name)}")
    from keystone_ingest.server.sinks.kafka.security import check_kafka_security

    check_kafka_security(c)


class Gate:
    """What the ingest service asks before taking a call or a batch."""

    def __init__(self, tokens: TokensFile | None, quotas: CallerQuotas) -> None:
        self.tokens = tokens
        self.quotas = quotas

    def authenticate(self, metadata) -> Caller | None:
        """The caller presenting the call's token; None when authentication is
        off. Raises Unauthenticated."""
        if self.tokens is None:
            return None
        token = bearer_token(metadata)
        caller = self.tokens.caller(token) if token else None
        if caller is None:
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        return caller

    def admit(self, context: grpc.aio.ServicerContext) -> tuple[str | None, str]:
        """(authenticated caller name or None, quota key) for an ingest call;
        raises Unauthenticated or PermissionDenied."""
        caller = self.authenticate(context.invocation_metadata())
        if caller is None:
            return None, _peer_host(context.peer())
        if not caller.may(INGEST_PERMISSION):
            raise PermissionDenied(f"caller {caller.name} may not ingest orders")
        return caller.name, caller.name


def _peer_host(peer: str) -> str:
    # "ipv4:127.0.0.1:53412" -> "ipv4:127.0.0.1"; "ipv6:[::1]:5341" -> "ipv6:[::1]"
    head, sep, tail = peer.rpartition(":")
    return head if sep and tail.isdigit() else peer


class _AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for calls without a valid token, before any handler
    runs; health checks pass. The ingest service checks permissions itself
    (it needs the caller's name anyway)."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        try:
            self._gate.authenticate(details.invocation_metadata)
        except Unauthenticated as exc:
            return _refusing(handler, exc)
        return handler


def _refusing(handler: grpc.RpcMethodHandler, exc: IngestError) -> grpc.RpcMethodHandler:
    async def refuse(_request, context: grpc.aio.ServicerContext):
        await context.abort(exc.status, exc.message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse, request_deserializer=None, response_serializer=None)


class ServerSecurity:
    def __init__(self, config: ServeConfig) -> None:
        c = config
        self.config = c
        self.tls: ServerTls | None = None
        try:
            if c.tls_cert:
                assert c.tls_key is not None  # check_config(): --tls-cert and --tls-key go together
                self.tls = ServerTls(c.tls_cert, c.tls_key, c.tls_client_ca)
            tokens = TokensFile(c.auth_tokens_file) if c.auth_tokens_file else None
        except (TlsConfigError, TokensFileError) as exc:
            # As a bind failure: the server exits 1 with the reason (paths and
            # line numbers, never a key or a token).
            raise OSError(str(exc)) from None
        quotas = CallerQuotas(
            rate_per_s=c.caller_rate_batches_s, burst=c.caller_burst_batches, max_streams=c.max_streams_per_caller
        )
        self.gate = Gate(tokens, quotas)

    def grpc_options(self) -> list[tuple[str, int]]:
        c = self.config
        return [
            ("grpc.max_concurrent_streams", c.max_streams_per_connection),
            # Keepalive: the server pings a connection quiet for keepalive_time_s
            # and closes it if no answer comes within keepalive_timeout_s, so a
            # vanished client (no FIN, no RST) frees its streams and their byte
            # budgets. Pings are sent with no calls open too.
            ("grpc.keepalive_time_ms", int(c.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(c.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Enforcement: a client pinging more often than this gets strikes,
            # and after max_ping_strikes a GOAWAY (too_many_pings).
            ("grpc.http2.min_recv_ping_interval_without_data_ms", int(c.min_client_ping_interval_s * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", int(c.min_client_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
        ]

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [_AuthInterceptor(self.gate)] if self.gate.tokens is not None else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Binds `address` with TLS when configured; logs what is served."""
        c = self.config
        if self.tls is not None:
            port = server.add_secure_port(address, self.tls.credentials())
        else:
            port = server.add_insecure_port(address)
            host = c.listen.rpartition(":")[0].strip("[]")
            if not is_loopback(host):
                log.warning(
                    "serving PLAINTEXT gRPC on a non-loopback address (--insecure): batches and tokens "
                    "cross the network unencrypted",
                    extra={"listen": c.listen},
                )
        log.info(
            "transport security",
            extra={
                "tls": self.tls is not None,
                "mutual_tls": bool(self.tls and self.tls.mutual),
                "authentication": "tokens-file" if self.gate.tokens is not None else "none",
                "callers": len(self.gate.tokens) if self.gate.tokens is not None else None,
            },
        )
        return port
