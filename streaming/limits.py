"""Size limits of the speed layer in one place, with Kafka's own defaults (ADR 0005).

Stdlib only: the CLI shows them in --help without importing the consumer.

| name here                     | Kafka setting (side)                | Kafka default |
|-------------------------------|-------------------------------------|---------------|
| PRODUCER_MAX_REQUEST_SIZE     | max.request.size (producer)         | 1048576       |
| BROKER_MESSAGE_MAX_BYTES      | message.max.bytes (broker; topics'  | 1048588       |
|                               | max.message.bytes inherit it)       | (1 MiB + 12)  |
| FETCH_MAX_BYTES               | fetch.max.bytes (consumer)          | 52428800      |
| MAX_PARTITION_FETCH_BYTES     | max.partition.fetch.bytes (consumer)| 1048576       |
| FETCH_MAX_WAIT_MS             | fetch.max.wait.ms (consumer)        | 500           |

The fetch limits bound memory, not message size: since KIP-74 a broker returns a record batch
larger than either alone, so the consumer still makes progress (Tansu 0.6 does too: a 20 MB
record came back with these defaults). MAX_EVENT_BYTES is ours: the event contract's limit.

FETCH_MAX_WAIT_MS is how long the broker may hold a fetch that has no data yet; a broker answers
as soon as a record is there (fetch.min.bytes = 1), so it costs no latency on a busy topic. A
short wait starves a consumer whose broker needs longer than it to read its storage: Tansu's s3
engine lists the partition's objects on every fetch, and past ~1,000 stored batches that takes
longer than 50 ms, so with 50 ms every fetch came back empty and the consumer stored nothing
more, for good (ADR 0008; the week rehearsal's day 3).
"""
PRODUCER_MAX_REQUEST_SIZE = 1_048_576
BROKER_MESSAGE_MAX_BYTES = 1_048_588
FETCH_MAX_BYTES = 52_428_800
MAX_PARTITION_FETCH_BYTES = 1_048_576
FETCH_MAX_WAIT_MS = 500
MAX_EVENT_BYTES = 16 * 1024  # a real event is ~200 B; anything this big is not an event
