"""Bronze: the Kafka topics as Hive-partitioned Parquet, written exactly once by a consumer group."""
