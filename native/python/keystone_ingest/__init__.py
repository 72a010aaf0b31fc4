"""Keystone Ingest: a gRPC order-ingestion service with a native core.

Subpackages:
    keystone_ingest.core     the native decode/validate/dedup/Arrow core (C++ behind a façade)
    keystone_ingest.proto    Python classes generated from proto/ at build time
    keystone_ingest.server   the gRPC service
    keystone_ingest.client   client library, synthetic order generator and CLIs
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keystone-ingest")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
