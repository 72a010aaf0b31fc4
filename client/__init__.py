"""Client side of Keystone Ingest: the client library, a synthetic order
generator, and the `load` and `replay` commands.

    from keystone_ingest.client import IngestClient, OrderGenerator

    with IngestClient("127.0.0.1:50051") as client:
        ack = client.ingest(OrderGenerator(seed=1).batch(1000))
"""

from keystone_ingest.client.client import (
    RETRIABLE_CODES,
    AckMismatchError,
    AsyncIngestClient,
    BatchTooLarge,
    ClientClosedError,
    IngestClient,
    IngestClientError,
    IngestRpcError,
    RetryPolicy,
    is_retriable,
    new_batch_id,
    with_batch_id,
)
from keystone_ingest.client.generator import OrderGenerator
from keystone_ingest.client.load import LoadOptions, LoadSummary, run_load
from keystone_ingest.client.replay import ReplayOptions, run_replay

__all__ = [
    "RETRIABLE_CODES",
    "AckMismatchError",
    "AsyncIngestClient",
    "BatchTooLarge",
    "ClientClosedError",
    "IngestClient",
    "IngestClientError",
    "IngestRpcError",
    "LoadOptions",
    "LoadSummary",
    "OrderGenerator",
    "ReplayOptions",
    "RetryPolicy",
    "is_retriable",
    "new_batch_id",
    "run_load",
    "run_replay",
    "with_batch_id",
]
