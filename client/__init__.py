"""Client side of Keystone Ingest: client library, synthetic order generator and CLIs."""
