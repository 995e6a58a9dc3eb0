"""Dead-letter records that always fit: pure construction of the DLQ copy of a rejected message.

A message of any size must end in RocksDB or in the dead-letter topic (ADR 0005). The source
topic may hold records far larger than what the DLQ producer may send (a 2 MB `query_text`, a
20 MB blob), so the copy is cut to fit the producer's `max_request_size` and the broker's
`message.max.bytes`, and its headers say what was cut and how to find the original:

    reason            why it was rejected (capped at MAX_REASON_BYTES)
    source_topic / source_partition / source_offset   where the original still is
    original_bytes    size of the original value (0 for a null value)
    original_sha256   hex sha256 of the original value's bytes (of b"" for a null value)
    truncated_to      only when cut: how many leading bytes of the value the copy keeps
    original_key_bytes  only when the key itself was cut

No I/O here: the consumer sends what `dead_letter` returns.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streaming.limits import BROKER_MESSAGE_MAX_BYTES, PRODUCER_MAX_REQUEST_SIZE  # noqa: F401

# A v2 record batch header is 61 bytes and one record's varint framing at most ~21 bytes, plus
# 1 per header for its count and up to 10 for each header's lengths; 1 KiB covers all of it.
_RECORD_OVERHEAD = 1024
MAX_REASON_BYTES = 1000
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


def _cap(text: str, limit: int) -> bytes:
    b = text.encode("utf-8", "replace")
    return b if len(b) <= limit else b[: limit - 3] + b"..."


def record_bytes(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """An upper bound of the record's size in a v2 batch (what the producer checks)."""
    return (_RECORD_OVERHEAD + len(key or b"") + len(value)
            + sum(len(k.encode()) + len(v) for k, v in headers))


def dead_letter(src: Source, key: bytes | None, value: bytes | None, reason: str,
                max_record_bytes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the DLQ copy, guaranteed to be at most `max_record_bytes`
    by `record_bytes`; the value is cut (leading bytes kept) only when it has to be."""
    original = value or b""
    headers = [("reason", _cap(reason, MAX_REASON_BYTES)),
               ("source_topic", src.topic.encode()),
               ("source_partition", str(src.partition).encode()),
               ("source_offset", str(src.offset).encode()),
               ("original_bytes", str(len(original)).encode()),
               ("original_sha256", hashlib.sha256(original).hexdigest().encode())]
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append(("original_key_bytes", str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    room = max_record_bytes - record_bytes(key, b"", headers + [("truncated_to", b"9" * 20)])
    if room < 0:
        raise ValueError(f"max_record_bytes={max_record_bytes} leaves no room for a dead-letter "
                         f"record's headers; use at least {max_record_bytes - room}")
    if len(original) <= room:
        return key, original, headers
    headers.append(("truncated_to", str(room).encode()))
    return key, original[:room], headers


def fit_limit(producer_max_request_size: int, broker_message_max_bytes: int) -> int:
    """The largest DLQ record both the producer and the broker accept."""
    return min(producer_max_request_size, broker_message_max_bytes)
