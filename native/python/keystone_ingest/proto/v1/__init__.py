"""keystone.ingest.v1: `ingest_pb2` is generated here by the build."""
