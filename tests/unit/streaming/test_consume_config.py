"""`pinrec stream consume` size limits: explicit, Kafka's defaults, and the flags reach the config."""
from __future__ import annotations

from pinrec.cli import build_parser
from streaming.cli import consumer_config
from streaming.consumer import ConsumerConfig

# Apache Kafka's documented defaults (consumer fetch.max.bytes, max.partition.fetch.bytes;
# producer max.request.size; broker message.max.bytes = 1 MiB + 12 since KAFKA-4203).
# fetch.max.wait.ms = 500: shorter starved the consumer on Tansu's s3 engine (ADR 0008).
KAFKA = {"fetch_max_bytes": 52_428_800, "max_partition_fetch_bytes": 1_048_576,
         "dlq_max_request_size": 1_048_576, "dlq_broker_max_message_bytes": 1_048_588,
         "fetch_max_wait_ms": 500}


def parse(*flags):
    return consumer_config(build_parser().parse_args(["stream", "consume", "--lake", "L", *flags]))


def test_defaults_are_kafkas_in_the_config_and_on_the_command_line():
    for cfg in (ConsumerConfig("b:1", "db"), parse()):
        assert {k: getattr(cfg, k) for k in KAFKA} == KAFKA
        assert cfg.max_event_bytes == 16_384 and cfg.max_poll_records == 500
        assert cfg.dlq_record_limit == 1_048_576  # the smaller of producer and broker limits


def test_every_size_flag_reaches_the_config():
    cfg = parse("--max-event-bytes", "4096", "--fetch-max-bytes", "1000000",
                "--max-partition-fetch-bytes", "200000", "--dlq-max-request-size", "5000000",
                "--dlq-broker-max-message-bytes", "3000000", "--max-poll-records", "7")
    assert (cfg.max_event_bytes, cfg.fetch_max_bytes, cfg.max_partition_fetch_bytes,
            cfg.dlq_max_request_size, cfg.dlq_broker_max_message_bytes, cfg.max_poll_records) == \
        (4096, 1_000_000, 200_000, 5_000_000, 3_000_000, 7)
    assert cfg.dlq_record_limit == 3_000_000
