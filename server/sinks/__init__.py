"""The sinks a batch goes to after the native core: Kafka (kafka.py) and Bronze Parquet (bronze.py)."""
