"""Size limits of the speed layer in one place, with Kafka's own defaults (ADR 0005).

Stdlib only: the CLI shows them in --help without importing the consumer.

| name here                     | Kafka setting (side)                | Kafka default |
|-------------------------------|-------------------------------------|---------------|
| PRODUCER_MAX_REQUEST_SIZE     | max.request.size (producer)         | 1048576       |
| BROKER_MESSAGE_MAX_BYTES      | message.max.bytes (broker; topics'  | 1048588       |
|                               | max.message.bytes inherit it)       | (1 MiB + 12)  |
| FETCH_MAX_BYTES               | fetch.max.bytes (consumer)          | 52428800      |
| MAX_PARTITION_FETCH_BYTES     | max.partition.fetch.bytes (consumer)| 1048576       |

The fetch limits bound memory, not message size: since KIP-74 a broker returns a record batch
larger than either alone, so the consumer still makes progress (Tansu 0.6 does too: a 20 MB
record came back with these defaults). MAX_EVENT_BYTES is ours: the event contract's limit.
"""
PRODUCER_MAX_REQUEST_SIZE = 1_048_576
BROKER_MESSAGE_MAX_BYTES = 1_048_588
FETCH_MAX_BYTES = 52_428_800
MAX_PARTITION_FETCH_BYTES = 1_048_576
MAX_EVENT_BYTES = 16 * 1024  # a real event is ~200 B; anything this big is not an event
