"""Atheris fuzz target for the whole Python request path: raw bytes in, over
real gRPC, through the service, the batch_id window, the native core, the
Kafka sink (one Apache Kafka node), to the ack. (Bronze is written from the
topics by the Bronze worker, off the request path; its decoder has a libFuzzer
target of its own.)

    python tests/fuzz/fuzz_request_path.py -max_total_time=60 build/fuzz/py-corpus build/fuzz/seed

Each input is sent as one `IngestOrders` call to an in-process server. A
crash is any answer outside the contract:
  - a status other than OK (RESOURCE_EXHAUSTED is allowed only for an input
    over --max-message-bytes);
  - an ack whose status is not ACCEPTED, REJECTED or DUPLICATE_BATCH;
  - a REJECTED ack without exactly one `code: message` error;
  - an ACCEPTED ack whose batch_id is not the input's, or whose counts do not
    add up to the number of orders protobuf's own parser finds in the input.
The server's log is kept at WARNING so a long run does not fill the disk;
a server that dies ends the run with a crash.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import tempfile
import threading

import atheris

with atheris.instrument_imports(include=["keystone_ingest"]):
    from keystone_ingest.core import batch_id_of
    from keystone_ingest.proto.v1 import ingest_pb2
    from keystone_ingest.server.app import IngestServer
    from keystone_ingest.server.config import ServeConfig

import grpc
from keystone_ingest.dev.kafka import KafkaCluster

MAX_MESSAGE_BYTES = 1 << 20
UNARY_METHOD = "/keystone.ingest.v1.OrderIngest/IngestOrders"
REASON = re.compile(r"^[a-z0-9_]+: .+", re.DOTALL)


class InProcessServer:
    """An IngestServer on its own event loop thread, with real sinks."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="keystone-fuzz-")
        self.broker = KafkaCluster(nodes=1).start()
        for topic, partitions in (("orders", 3), ("orders.dlq", 1)):
            self.broker.create_topic(topic, partitions)
        config = ServeConfig(
            listen="127.0.0.1:0",
            metrics_listen="",
            kafka_bootstrap=self.broker.bootstrap,
            bronze_uri="",
            max_message_bytes=MAX_MESSAGE_BYTES,
            dedup_window=100_000,
            batch_id_window=100_000,
            core_threads=1,
            send_timeout_s=30.0,
        )
        self.loop = asyncio.new_event_loop()
        self.server = IngestServer(config)
        started = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.server.start())
            except BaseException as exc:
                self.error = exc
                raise
            finally:
                started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="fuzz-server", daemon=True)
        self.thread.start()
        started.wait()
        if self.error is not None:
            raise RuntimeError(f"the server did not start: {self.error}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.call = self.channel.unary_unary(
            UNARY_METHOD, request_serializer=None, response_deserializer=ingest_pb2.BatchAck.FromString
        )


SERVER: InProcessServer | None = None


def check(raw: bytes) -> None:
    try:
        ack = SERVER.call(raw, timeout=60)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(raw) > MAX_MESSAGE_BYTES:
            return
        raise AssertionError(f"{len(raw)}-byte input answered {error.code().name}: {error.details()}") from None
    if ack.status == ingest_pb2.ACK_STATUS_REJECTED:
        if len(ack.errors) != 1 or not REASON.match(ack.errors[0].reason):
            raise AssertionError(f"rejected batch with errors {list(ack.errors)}")
        return
    if ack.status == ingest_pb2.ACK_STATUS_DUPLICATE_BATCH:
        return
    if ack.status != ingest_pb2.ACK_STATUS_ACCEPTED:
        raise AssertionError(f"ack status {ack.status}")
    if ack.batch_id != batch_id_of(raw):
        raise AssertionError(f"ack for {ack.batch_id!r}, input's batch_id is {batch_id_of(raw)!r}")
    parsed = ingest_pb2.OrderBatch()
    parsed.ParseFromString(raw)  # the core accepted it: protobuf must parse it too
    if ack.accepted + ack.duplicates + ack.rejected != len(parsed.orders):
        raise AssertionError(f"counts {ack.accepted}+{ack.duplicates}+{ack.rejected} for {len(parsed.orders)} orders")


def test_one_input(data: bytes) -> None:
    check(data)


def main() -> None:
    global SERVER
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("keystone_ingest").setLevel(logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    SERVER = InProcessServer()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
