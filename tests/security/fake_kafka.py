"""A one-node Kafka broker that speaks only what a client needs to connect:
ApiVersions, SaslHandshake, SaslAuthenticate and Metadata (old, non-flexible
versions, so every frame is simple). It records what each connection sent,
and can drop every open connection, as MSK does when a SASL session expires.

It stands in for Amazon MSK's IAM listener (SASL OAUTHBEARER with a SigV4
token), which Apache Kafka does not ship: the tests check what aiokafka sends
when it authenticates with the MSK IAM token provider. PLAIN and SCRAM, with
and without TLS, are tested against Apache Kafka's own listeners
(test_kafka_listeners.py). Responses are encoded with aiokafka's own protocol
classes.
"""

from __future__ import annotations

import asyncio
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


class FakeSaslBroker:
    def __init__(self, mechanism: str = "OAUTHBEARER") -> None:
        self.mechanism = mechanism
        self.connections: list[Connection] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Listens on 127.0.0.1."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
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
                    answer = SaslHandShakeResponse_v1(
                        0 if connection.mechanism == self.mechanism else 33, [self.mechanism]
                    )
                elif api_key == SASL_AUTHENTICATE:
                    (length,) = struct.unpack_from(">i", body, 0)
                    connection.auth_bytes = body[4 : 4 + length]
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
