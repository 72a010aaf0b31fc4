"""gRPC over TLS and mutual TLS, with certificates reloaded without a restart.

    tls = ServerTls(cert_path, key_path, client_ca_path)   # checks the files now
    port = server.add_secure_port(address, tls.credentials())

Reload. gRPC asks `_fetch` for the certificate configuration at every new TLS
handshake. `_fetch` compares the files' (mtime, size, inode) with those it last
loaded and loads them again only when one changed, so renewing a certificate is
"write the new files" (or rename them into place, as cert-manager and certbot
do): the next connection gets the new certificate, connections already open keep
the one they were made with. A half-written or mismatched set (a new cert
before its key) is refused and the previous configuration stays in use until
the files are consistent again; that is logged, once per change, without the
files' contents.

mTLS. With a client CA the server requires a client certificate signed by it;
the handshake fails otherwise, so an unknown client never reaches a handler.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading

import grpc

log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """Unusable certificate files, named by path (never by content)."""


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}: {exc.strerror or exc}") from None


def check_key_pair(cert_path: str, key_path: str) -> None:
    """Raises TlsConfigError unless `key_path` is the private key of `cert_path`'s certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"--tls-cert {cert_path} and --tls-key {key_path} are not a certificate and its key "
            f"({exc.reason or 'unreadable'})"
        ) from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read --tls-cert {cert_path} or --tls-key {key_path}: {exc.strerror}") from None


def check_ca(ca_path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=ca_path)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"--tls-client-ca {ca_path} holds no usable CA certificate ({exc})") from None


class ServerTls:
    def __init__(self, cert_path: str, key_path: str, client_ca_path: str | None = None) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.client_ca_path = client_ca_path
        self._lock = threading.Lock()  # _fetch runs on gRPC's threads
        self._stamps: tuple | None = None
        self._current: grpc.ServerCertificateConfiguration | None = None
        self.loads = 0  # configurations loaded (1 at start, +1 per reload)
        self._load()  # refuse to start on bad files

    @property
    def mutual(self) -> bool:
        return self.client_ca_path is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._current, self._fetch, require_client_authentication=self.mutual
        )

    def _paths(self) -> list[str]:
        return [p for p in (self.cert_path, self.key_path, self.client_ca_path) if p]

    def _load(self) -> grpc.ServerCertificateConfiguration:
        stamps = tuple(_stamp(p) for p in self._paths())
        check_key_pair(self.cert_path, self.key_path)
        if self.client_ca_path:
            check_ca(self.client_ca_path)
        cert = _read(self.cert_path, "--tls-cert")
        key = _read(self.key_path, "--tls-key")
        ca = _read(self.client_ca_path, "--tls-client-ca") if self.client_ca_path else None
        # The stamps taken before reading: a file replaced while we read it
        # looks changed at the next handshake and is read again.
        self._current = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        self._stamps = stamps
        self.loads += 1
        return self._current

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate_configuration_fetcher: a new configuration, or
        None to keep the one in use."""
        with self._lock:
            try:
                stamps = tuple(_stamp(p) for p in self._paths())
            except OSError:
                return None  # a file being replaced: keep the current one
            if stamps == self._stamps:
                return None
            try:
                config = self._load()
            except TlsConfigError as exc:
                self._stamps = stamps  # logged once per change, not at every handshake
                log.error(
                    "TLS files changed but cannot be used; keeping the previous certificate", extra={"error": str(exc)}
                )
                return None
            log.info("TLS certificate reloaded", extra={"cert": self.cert_path, "loads": self.loads})
            return config
