"""The speed layer: event parsing, the Kafka consumer loop and the RocksDB realtime store."""
