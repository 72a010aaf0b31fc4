"""The gRPC ingestion server: keystone_ingest.server."""
