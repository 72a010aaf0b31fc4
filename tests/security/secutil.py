"""Helpers of the security tests: tokens files, the certificate a server
presents (servers: inprocess.py and serverutil.py; waiting: waiting.py)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from certs import Issued
from keystone_ingest.server.security.auth import token_digest

UNARY_METHOD = "/keystone.ingest.v1.OrderIngest/IngestOrders"
STREAM_METHOD = "/keystone.ingest.v1.OrderIngest/StreamOrders"

TOKENS = {"checkout-api": "tok-checkout-2f7c9a", "backfill-job": "tok-backfill-88d1e0", "auditor": "tok-auditor-51aa3b"}


def tokens_file_text(tokens: dict[str, str] = TOKENS, no_ingest: tuple[str, ...] = ("auditor",)) -> str:
    lines = ["# caller  permissions  sha256 of the token"]
    for name, token in tokens.items():
        lines.append(f"{name} {'-' if name in no_ingest else 'ingest'} sha256:{token_digest(token)}")
    return "\n".join(lines) + "\n"


def presented_serial(port: int, ca: Path, client: Issued | None = None) -> int:
    """The serial number of the certificate the server presents on a new connection."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number
