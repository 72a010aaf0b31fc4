"""Just enough HTTP/2 by hand to misbehave on purpose: a gRPC call whose
client stops mid-message, never opens its receive window, or sends garbage.

    with RawH2(port, initial_window=0) as h2:       # the server may never send us DATA
        h2.open(1, "/keystone.ingest.v1.OrderIngest/StreamOrders")
        h2.data(1, grpc_message(raw_batch))

Headers are HPACK literals without indexing and without Huffman coding
(RFC 7541 6.2.2), which every decoder accepts.
"""

from __future__ import annotations

import socket
import struct
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
MAX_FRAME = 16_384


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = [limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def grpc_message(payload: bytes, declared_length: int | None = None) -> bytes:
    """gRPC's length-prefixed message; `declared_length` may lie about the size."""
    return b"\x00" + struct.pack(">I", len(payload) if declared_length is None else declared_length) + payload


class RawH2:
    def __init__(self, port: int, *, initial_window: int | None = None, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.port = port
        self.frames: list[tuple[int, int, int, bytes]] = []  # (type, flags, stream, payload) from the server
        self.closed = threading.Event()
        self._lock = threading.Lock()
        settings = b"" if initial_window is None else struct.pack(">HI", 0x4, initial_window)
        self.send(PREFACE + frame(SETTINGS, 0, 0, settings))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def _read(self) -> None:
        # Reads every frame (so the server's writes never block on a full
        # socket), acknowledges SETTINGS and answers PINGs like any client,
        # but sends no WINDOW_UPDATE: a window we set to 0 stays 0.
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    kind, flags = buffer[3], buffer[4]
                    stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                    self.frames.append((kind, flags, stream, payload))
                    if kind == SETTINGS and not flags & ACK:
                        self.send(frame(SETTINGS, ACK, 0))
                    elif kind == PING and not flags & ACK:
                        self.send(frame(PING, ACK, 0, payload))
        except OSError:
            pass
        finally:
            self.closed.set()

    def open(self, stream: int, path: str, metadata: list[tuple[str, str]] = ()) -> None:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        self.send(frame(HEADERS, END_HEADERS, stream, b"".join(_literal(k, v) for k, v in headers)))

    def data(self, stream: int, payload: bytes, *, end_stream: bool = False) -> None:
        chunks = [payload[i : i + MAX_FRAME] for i in range(0, len(payload), MAX_FRAME)] or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            self.send(frame(DATA, END_STREAM if (end_stream and last) else 0, stream, chunk))

    def goaway_received(self) -> bool:
        return any(kind == GOAWAY for kind, *_ in self.frames)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(timeout=10)

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
