"""TLS, mutual TLS and bearer tokens for the client library and the CLIs.

    client = AsyncIngestClient(
        "ingest.example.com:50051",
        credentials=channel_credentials(ca="ca.pem", cert="client.pem", key="client-key.pem"),
        metadata=bearer_metadata(token),
    )

The token goes in call metadata (`authorization: Bearer ...`) rather than in
gRPC call credentials so that it is also sent on a plaintext channel to a
loopback server (gRPC refuses call credentials without TLS); never send it in
plaintext across a network.
"""

from __future__ import annotations

import grpc


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel_credentials(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials: `ca` (PEM) to verify the server (None: the system's
    roots); `cert` and `key` (PEM) to present a client certificate (mTLS)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )


def bearer_metadata(token: str) -> list[tuple[str, str]]:
    token = token.strip()
    if not token:
        raise ValueError("the bearer token is empty")
    return [("authorization", f"Bearer {token}")]


def read_token_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()
