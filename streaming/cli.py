"""`pinrec stream consume | land-served | replay | sweep | broker` — the speed layer's entry points."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pinrec.core.cli_args import add_lake_arg
from pinrec.core.errors import UserError


def default_bootstrap() -> str:
    return os.environ.get("PINREC_KAFKA", "127.0.0.1:9092")


def default_db(lake: str) -> str:
    return os.environ.get("PINREC_REALTIME_DB") or str(Path(lake) / "realtime" / "rocksdb")


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(sp, db=True):
        add_lake_arg(sp)
        sp.add_argument("--bootstrap", default=default_bootstrap(),
                        help="Kafka bootstrap host:port (default: $PINREC_KAFKA or 127.0.0.1:9092)")
        sp.add_argument("--topic", default="engagements")
        if db:
            sp.add_argument("--db", default=None,
                            help="RocksDB folder (default: $PINREC_REALTIME_DB or <lake>/realtime/rocksdb)")

    c = sub.add_parser("consume", help="consume the topic into RocksDB until SIGTERM/SIGINT")
    common(c)
    c.add_argument("--group", default="pinrec-speed-layer")
    c.add_argument("--dlq-topic", default="engagements-dlq")
    c.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on 127.0.0.1:PORT")
    c.add_argument("--no-sweep", action="store_true",
                   help="do not skip/sweep events older than the newest sequences cutoff")
    c.add_argument("--sweep-every-s", type=float, default=300.0)
    c.add_argument("--log-every-s", type=float, default=10.0)
    c.add_argument("--max-poll-records", type=int, default=500,
                   help="records per poll, processed and committed together (default %(default)s)")
    from streaming.limits import (BROKER_MESSAGE_MAX_BYTES, FETCH_MAX_BYTES, MAX_EVENT_BYTES,
                                  MAX_PARTITION_FETCH_BYTES, PRODUCER_MAX_REQUEST_SIZE)

    lim = c.add_argument_group("size limits (defaults: Kafka's own; docs/ops.md)")
    lim.add_argument("--max-event-bytes", type=int, default=MAX_EVENT_BYTES,
                     help="a message larger than this is dead-lettered as 'oversized payload' "
                          "(default %(default)s)")
    lim.add_argument("--fetch-max-bytes", type=int, default=FETCH_MAX_BYTES,
                     help="consumer fetch.max.bytes (default %(default)s)")
    lim.add_argument("--max-partition-fetch-bytes", type=int, default=MAX_PARTITION_FETCH_BYTES,
                     help="consumer max.partition.fetch.bytes (default %(default)s); a larger "
                          "record is still fetched, alone")
    lim.add_argument("--dlq-max-request-size", type=int, default=PRODUCER_MAX_REQUEST_SIZE,
                     help="DLQ producer max.request.size (default %(default)s); dead letters "
                          "are cut to fit it")
    lim.add_argument("--dlq-broker-max-message-bytes", type=int, default=BROKER_MESSAGE_MAX_BYTES,
                     help="the DLQ topic's max.message.bytes on the broker (default %(default)s, "
                          "Kafka's message.max.bytes); dead letters are cut to fit it too")

    ls = sub.add_parser("land-served", help="land the served topic into the `served` Delta table "
                        "(exactly once per request id) until SIGTERM/SIGINT")
    add_lake_arg(ls)
    ls.add_argument("--bootstrap", default=default_bootstrap(),
                    help="Kafka bootstrap host:port (default: $PINREC_KAFKA or 127.0.0.1:9092)")
    ls.add_argument("--topic", default="served")
    ls.add_argument("--dlq-topic", default="served-dlq")
    ls.add_argument("--group", default="pinrec-served-lander")
    ls.add_argument("--max-records", type=int, default=5000,
                    help="land when this many responses are pending (size trigger)")
    ls.add_argument("--max-wait-s", type=float, default=30.0,
                    help="land at least this often while responses are pending (time trigger)")
    ls.add_argument("--metrics-port", type=int, default=None,
                    help="serve Prometheus /metrics on 127.0.0.1:PORT")

    r = sub.add_parser("replay", help="produce events from the lake, a file or a generator")
    common(r, db=False)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSON-lines file, one message per line (sent as-is)")
    src.add_argument("--from-lake", nargs=2, metavar=("DS_FROM", "DS_TO"),
                     help="events of these ds partitions (inclusive), in time order")
    src.add_argument("--synthetic", type=int, metavar="N", help="N generated events")
    r.add_argument("--rate", type=float, default=0.0, help="messages/s (0 = unpaced)")
    r.add_argument("--max-request-size", type=int, default=PRODUCER_MAX_REQUEST_SIZE,
                   help="producer max.request.size (default %(default)s, Kafka's); raise it to "
                        "send larger test messages")
    r.add_argument("--limit", type=int, default=None)
    r.add_argument("--users", type=int, default=10_000, help="with --synthetic")
    r.add_argument("--seed", type=int, default=0, help="with --synthetic")
    r.add_argument("--start-us", type=int, default=None,
                   help="with --synthetic: first event ts (default: now - N ms)")
    r.add_argument("--id-prefix", default="syn",
                   help="with --synthetic: event ids are hash(prefix, i); use distinct prefixes "
                        "for producers running side by side")

    s = sub.add_parser("sweep", help="drop events older than the newest sequences cutoff "
                       "(run while the consumer is stopped; the consumer also sweeps itself)")
    add_lake_arg(s)
    s.add_argument("--db", default=None)
    s.add_argument("--cutoff-us", type=int, default=None, help="override the cutoff (UTC µs)")

    k = sub.add_parser("skip", help="move a stopped consumer group past records it cannot get "
                       "past (after exit 69): commit OFFSET+1 for TOPIC/PARTITION")
    k.add_argument("--bootstrap", default=default_bootstrap())
    k.add_argument("--group", default="pinrec-speed-layer")
    k.add_argument("--topic", default="engagements")
    k.add_argument("--partition", type=int, required=True)
    k.add_argument("--offset", type=int, required=True,
                   help="the last offset to give up on (from the exit-69 message: topic/P@OFFSET)")

    b = sub.add_parser("broker", help="run a local Tansu broker on 127.0.0.1 until SIGTERM")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--storage", default="memory://tansu/",
                   help="memory://tansu/ (lost on restart) or s3://tansu/ (needs AWS_ENDPOINT)")
    b.add_argument("--topics", default="engagements:4,engagements-dlq:1,served:4,served-dlq:1",
                   help="topics to create, name:partitions,...")


def consumer_config(args):
    """The consumer's config from `pinrec stream consume` flags (pure)."""
    from streaming.consumer import ConsumerConfig

    return ConsumerConfig(bootstrap=args.bootstrap, db_path=Path(args.db or default_db(args.lake)),
                          topic=args.topic, dlq_topic=args.dlq_topic, group=args.group,
                          metrics_port=args.metrics_port, log_every_s=args.log_every_s,
                          lake=None if args.no_sweep else Path(args.lake),
                          sweep_every_s=args.sweep_every_s, max_event_bytes=args.max_event_bytes,
                          max_poll_records=args.max_poll_records,
                          fetch_max_bytes=args.fetch_max_bytes,
                          max_partition_fetch_bytes=args.max_partition_fetch_bytes,
                          dlq_max_request_size=args.dlq_max_request_size,
                          dlq_broker_max_message_bytes=args.dlq_broker_max_message_bytes)


def _consume(args) -> int:
    from streaming.consumer import (EXIT_CANNOT_DEAD_LETTER, EXIT_STORE_UNAVAILABLE,
                                    CannotDeadLetter, StoreUnavailable, run)

    cfg = consumer_config(args)
    try:
        m = run(cfg)
    except CannotDeadLetter as e:  # a crash loop would re-read the same records: stop, say why
        print(f"pinrec stream consume: stopped (exit {EXIT_CANNOT_DEAD_LETTER}): {e}",
              file=sys.stderr)
        return EXIT_CANNOT_DEAD_LETTER
    except StoreUnavailable as e:
        print(f"pinrec stream consume: stopped (exit {EXIT_STORE_UNAVAILABLE}): {e}",
              file=sys.stderr)
        return EXIT_STORE_UNAVAILABLE
    print(f"stopped: stored {m.events_stored} events, {m.dlq} to the DLQ, "
          f"committed {dict(m.committed)}")
    return 0


def _land_served(args) -> int:
    from streaming.served_lander import LanderConfig, run

    if args.max_records < 1 or args.max_wait_s <= 0:
        raise UserError(f"--max-records must be >= 1 and --max-wait-s > 0, got "
                        f"{args.max_records} and {args.max_wait_s}")
    cfg = LanderConfig(bootstrap=args.bootstrap, lake=Path(args.lake), topic=args.topic,
                       dlq_topic=args.dlq_topic, group=args.group, max_records=args.max_records,
                       max_wait_s=args.max_wait_s, metrics_port=args.metrics_port)
    m = run(cfg)
    print(f"stopped: landed {m.records_landed} responses ({m.rows_landed} rows) in "
          f"{m.landings} landings, {m.dlq} to the DLQ, committed {dict(m.committed)}")
    return 0


def _replay(args) -> int:
    import time

    from streaming import replay as rp

    cfg = rp.ReplayConfig(bootstrap=args.bootstrap, topic=args.topic, rate=args.rate,
                          limit=args.limit, max_request_size=args.max_request_size)
    if args.file:
        if not Path(args.file).exists():
            raise UserError(f"--file {args.file} does not exist")
        msgs = rp.file_messages(args.file)
    elif args.from_lake:
        msgs = rp.event_messages(rp.lake_events(args.lake, *args.from_lake))
    else:
        start = args.start_us or int(time.time() * 1e6) - args.synthetic * 1000
        msgs = rp.event_messages(rp.synthetic_events(args.synthetic, args.users, 100_000,
                                                     start, args.seed, prefix=args.id_prefix))
    t0 = time.perf_counter()
    n = rp.produce(cfg, msgs, progress=lambda k: print(f"  {k} sent", file=sys.stderr))
    dt = time.perf_counter() - t0
    print(f"produced {n} messages to {args.topic} in {dt:.1f}s ({n / max(dt, 1e-9):.0f}/s)")
    return 0


def _sweep(args) -> int:
    from streaming.store import RealtimeStore
    from streaming.sweeper import batch_cutoff_us

    cutoff = args.cutoff_us if args.cutoff_us is not None else batch_cutoff_us(args.lake)
    if cutoff is None:
        raise UserError(f"no sequences partition under {args.lake}; nothing defines a cutoff "
                        "(run `pinrec sequences` first or pass --cutoff-us)")
    store = RealtimeStore.open(args.db or default_db(args.lake))
    try:
        removed = store.sweep(cutoff)
        left = store.count()
    finally:
        store.close()
    print(f"swept {removed} events older than {cutoff}; {left} remain")
    return 0


def _skip(args) -> int:
    """Commit offset+1 for the group: the records up to `offset` are given up (they stay in
    the topic). Run it only while every consumer of the group is stopped."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    tp = TopicPartition(args.topic, args.partition)
    c = KafkaConsumer(bootstrap_servers=args.bootstrap, group_id=args.group,
                      enable_auto_commit=False)
    try:
        before = c.committed(tp)
        if before is not None and before > args.offset:
            raise UserError(f"group {args.group!r} is already at offset {before} of "
                            f"{args.topic}/{args.partition}, past {args.offset}; nothing to skip")
        c.assign([tp])
        c.commit({tp: OffsetAndMetadata(args.offset + 1, "skipped by pinrec stream skip", -1)})
        after = c.committed(tp)
    finally:
        c.close()
    # The consumer writes a batch's good events before it dead-letters, so after exit 69 the
    # records before the named one are already stored; only the named record is given up.
    print(f"group {args.group}: {args.topic}/{args.partition} committed {before} -> {after}; "
          f"the group resumes at {args.offset + 1}, record {args.offset} stays only in the topic "
          f"(for its retention)")
    return 0


def _broker(args) -> int:
    import signal
    import threading

    from streaming.broker import Tansu, create_topics

    topics = dict((t.split(":")[0], int(t.split(":")[1])) for t in args.topics.split(",") if t)
    t = Tansu.start(port=args.port, storage=args.storage)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        create_topics(t.bootstrap, topics)
        print(f"tansu pid {t.proc.pid} on {t.bootstrap} ({args.storage}); topics {topics}", flush=True)
        stop.wait()
    finally:
        t.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    return {"consume": _consume, "land-served": _land_served, "replay": _replay, "sweep": _sweep,
            "skip": _skip,
            "broker": _broker}[args.action](args)
