"""A one-node Kafka broker that speaks only what a client needs to connect:
ApiVersions, SaslHandshake, SaslAuthenticate and Metadata (old, non-flexible
versions, so every frame is simple). It records what each connection sent,
and can drop every open connection, as MSK does when a SASL session expires.

The development broker (librdkafka's mock cluster) has no SASL; this stands in
for a SASL broker in the tests that check what aiokafka sends when it
authenticates. Responses are encoded with aiokafka's own protocol classes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from aiokafka.protocol.admin import ApiVersionResponse_v0, SaslAuthenticateResponse_v0, SaslHandShakeResponse_v1
from aiokafka.protocol.metadata import MetadataResponse_v0

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE, METADATA = 18, 17, 36, 3
SUPPORTED = [(API_VERSIONS, 0, 0), (SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 0), (METADATA, 0, 0)]


@dataclass
class Connection:
    requests: list[tuple[int, int]] = field(default_factory=list)  # (api_key, api_version) in order
    mechanism: str | None = None
    auth_bytes: bytes | None = None
    writer: asyncio.StreamWriter | None = None
    peer_certificate: dict | None = None  # the client's certificate, over mutual TLS
    scram: dict | None = None  # SCRAM exchange state
    authenticated_as: str | None = None  # set once a SCRAM proof checked out


class FakeSaslBroker:
    def __init__(self, mechanism: str = "OAUTHBEARER", scram_users: dict[str, str] | None = None) -> None:
        self.mechanism = mechanism
        self.scram_users = scram_users or {}
        self.connections: list[Connection] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, ssl_context=None) -> None:
        """Listens on 127.0.0.1 (with TLS when given a server SSLContext)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.drop_connections()
        self._server.close()
        await self._server.wait_closed()

    def drop_connections(self) -> None:
        for connection in self.connections:
            if connection.writer is not None and not connection.writer.is_closing():
                connection.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(writer=writer)
        tls = writer.get_extra_info("ssl_object")
        if tls is not None:
            connection.peer_certificate = tls.getpeercert()
        self.connections.append(connection)
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                api_key, api_version, correlation_id, client_id_len = struct.unpack_from(">hhih", frame, 0)
                body = frame[10 + max(client_id_len, 0) :]
                connection.requests.append((api_key, api_version))
                if api_key == API_VERSIONS:
                    answer = ApiVersionResponse_v0(0, SUPPORTED)
                elif api_key == SASL_HANDSHAKE:
                    (length,) = struct.unpack_from(">h", body, 0)
                    connection.mechanism = body[2 : 2 + length].decode()
                    answer = SaslHandShakeResponse_v1(0 if connection.mechanism == self.mechanism else 33, [self.mechanism])
                elif api_key == SASL_AUTHENTICATE:
                    (length,) = struct.unpack_from(">i", body, 0)
                    connection.auth_bytes = body[4 : 4 + length]
                    if self.mechanism.startswith("SCRAM-"):
                        reply = self._scram_step(connection, connection.auth_bytes)
                        answer = SaslAuthenticateResponse_v0(0 if reply is not None else 58,
                                                             None if reply is not None else "bad proof", reply or b"")
                    else:
                        answer = SaslAuthenticateResponse_v0(0, None, b"")
                elif api_key == METADATA:
                    if connection.auth_bytes is None:
                        break  # not authenticated: a real broker would refuse too
                    answer = MetadataResponse_v0([(1, "127.0.0.1", self.port)], [])
                else:
                    break
                payload = struct.pack(">i", correlation_id) + answer.encode()
                writer.write(struct.pack(">i", len(payload)) + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


    def _scram_step(self, connection: Connection, message: bytes) -> bytes | None:
        """RFC 5802, server side: server-first for the client-first message,
        server-final (its signature) for a client-final whose proof checks out,
        None for a bad proof."""
        digest = hashlib.sha512 if self.mechanism.endswith("512") else hashlib.sha256
        text = message.decode()
        if connection.scram is None:
            bare = text.split(",", 2)[2]  # after the GS2 header "n,,"
            fields = dict(part.split("=", 1) for part in bare.split(","))
            salt, iterations = os.urandom(16), 4096
            nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
            password = self.scram_users.get(fields["n"], "")
            salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), salt, iterations)
            connection.scram = {"user": fields["n"], "bare": bare, "server_first": server_first, "salted": salted}
            return server_first.encode()
        state = connection.scram
        without_proof, _, proof = text.rpartition(",p=")
        auth_message = f"{state['bare']},{state['server_first']},{without_proof}".encode()
        client_key = hmac.new(state["salted"], b"Client Key", digest).digest()
        signature = hmac.new(digest(client_key).digest(), auth_message, digest).digest()
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if not hmac.compare_digest(expected, base64.b64decode(proof)):
            return None
        connection.authenticated_as = state["user"]
        server_key = hmac.new(state["salted"], b"Server Key", digest).digest()
        return b"v=" + base64.b64encode(hmac.new(server_key, auth_message, digest).digest())
