"""Dead-letter copies always fit the limit, and say what was cut and where the original is."""
from __future__ import annotations

import hashlib

import pytest

from streaming.deadletter import Source, dead_letter, fit_limit, record_bytes
from streaming.limits import BROKER_MESSAGE_MAX_BYTES, PRODUCER_MAX_REQUEST_SIZE

SRC = Source("engagements", 3, 12345)
LIMIT = fit_limit(PRODUCER_MAX_REQUEST_SIZE, BROKER_MESSAGE_MAX_BYTES)


def test_limit_is_the_smaller_of_producer_and_broker():
    assert LIMIT == 1_048_576
    assert fit_limit(2_000_000, 1_048_588) == 1_048_588


def test_a_small_payload_is_kept_whole_with_its_size_and_checksum():
    raw = b'{"not": "an event"}'
    key, value, headers = dead_letter(SRC, b"k", raw, "missing required field 'event_id'", LIMIT)
    h = dict(headers)
    assert (key, value) == (b"k", raw)
    assert h["reason"] == b"missing required field 'event_id'"
    assert (h["source_topic"], h["source_partition"], h["source_offset"]) == \
        (b"engagements", b"3", b"12345")
    assert h["original_bytes"] == str(len(raw)).encode()
    assert h["original_sha256"] == hashlib.sha256(raw).hexdigest().encode()
    assert "truncated_to" not in h


@pytest.mark.parametrize("size", [2_000_370, 20_000_000])
def test_a_payload_over_the_limit_is_cut_to_fit_and_says_so(size):
    raw = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    key, value, headers = dead_letter(SRC, b"\x00" * 8, raw, "oversized payload", LIMIT)
    h = dict(headers)
    assert record_bytes(key, value, headers) <= LIMIT
    assert len(value) == int(h["truncated_to"]) and raw.startswith(value)
    assert LIMIT - 2048 < len(value) < LIMIT  # cut to fit, not to some small stub
    assert h["original_bytes"] == str(size).encode()
    assert h["original_sha256"] == hashlib.sha256(raw).hexdigest().encode()


def test_the_bound_holds_for_the_real_producer_estimate():
    """record_bytes must not under-estimate what kafka-python checks against max_request_size."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    raw = b"q" * 5_000_000
    key, value, headers = dead_letter(SRC, b"k" * 8, raw, "r" * 5000, LIMIT)
    real = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    assert real <= record_bytes(key, value, headers) <= LIMIT


def test_null_value_long_reason_and_huge_key_still_fit():
    key, value, headers = dead_letter(SRC, b"K" * 3_000_000, None, "é" * 10_000, 4096)
    h = dict(headers)
    assert value == b"" and len(key) == 1024 and h["original_key_bytes"] == b"3000000"
    assert h["original_bytes"] == b"0"
    assert h["original_sha256"] == hashlib.sha256(b"").hexdigest().encode()
    assert len(h["reason"]) <= 1000 and h["reason"].endswith(b"...")
    assert record_bytes(key, value, headers) <= 4096


def test_a_limit_too_small_for_the_headers_is_a_config_error_naming_the_minimum():
    with pytest.raises(ValueError, match="use at least"):
        dead_letter(SRC, b"k", b"x", "reason", 500)
