"""`pinrec rehearse --days N --lake L [--out DIR]`: run `pinrec_daily` through the real Airflow
scheduler for N consecutive days of synthetic data, with the speed layer and the serving API
running throughout, one fault per day, and the invariants checked after every day.

Timeline of day i (ds = D): the day's events partition lands in the lake; a producer replays
D+1's events (the fresh events of the day the batch runs on) into Tansu while ops create a
one-day backfill of D through the REST API; the fault acts; the run ends; the invariants are
checked against the serving API, RocksDB, the DLQ topic and the lake. A bootstrap day (ds =
the last history day, no fault) publishes the first model so that serving has one from day 1.
Exits 1 when any invariant broke, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from pinrec.core.errors import UserError
from pinrec.rehearsal import invariants as inv
from pinrec.rehearsal.day import Day, next_day
from pinrec.rehearsal.faults import FAULTS, WEEK, Fault
from pinrec.rehearsal.services import TOPIC, DLQ, AckedProducer, Proc, Traffic, wait_until

ARMS = {"balanced": {"repin": 0.5, "grid_click": 0.5}, "repin": {"repin": 1.0}}


@dataclass(frozen=True)
class RehearsalConfig:
    lake: Path
    out: Path
    faults: tuple[str, ...] = WEEK
    users: int = 1_000
    items: int = 1_000
    seed: int = 3
    start: str = "2026-01-01"
    history_days: int = 3          # landed before the bootstrap day (its ds is the last of them)
    train_seconds: int = 10        # the DAG param's minimum
    p99_ms: float = 500.0          # the stated latency bound (loaded 2-core host, Airflow running)
    sample_users: int = 100
    late_by_s: float = 15.0
    poke_s: int = 10               # the landing sensor's poke interval for the rehearsal
    day_timeout_s: float = 1800.0

    @property
    def days(self) -> int:
        return len(self.faults)

    @property
    def source_lake(self) -> Path:
        return self.out / "source-lake"

    @property
    def bootstrap_ds(self) -> str:
        return next_day(self.start, self.history_days - 1)

    @property
    def dag_conf(self) -> dict:
        # max_recall_drop is not set: the gate runs at its default threshold
        return {"train_max_seconds": self.train_seconds, "arms": ARMS}


@dataclass
class Services:
    out: Path
    lake: Path
    s3: object = None
    broker: object = None
    consumer: Proc | None = None
    serve: Proc | None = None
    traffic: Traffic | None = None
    serve_port: int = 0
    metrics_port: int = 0
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def db(self) -> Path:
        return self.out / "realtime" / "rocksdb"

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    def start_speed_layer(self, pinrec: str) -> None:
        from streaming.broker import MotoS3, Tansu, create_topics, free_port

        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.s3 = MotoS3.start(log=logs / "moto.log")
        self.broker = Tansu.start(storage="s3://tansu/", env=self.s3.env(), log=logs / "tansu.log")
        create_topics(self.bootstrap, {TOPIC: 2, DLQ: 1})
        self.metrics_port, self.serve_port = free_port(), free_port()
        self.consumer = Proc("consumer", [pinrec, "stream", "consume", "--lake", str(self.lake),
                                          "--bootstrap", self.bootstrap, "--db", str(self.db),
                                          "--topic", TOPIC, "--dlq-topic", DLQ,
                                          "--metrics-port", str(self.metrics_port),
                                          "--sweep-every-s", "5", "--log-every-s", "10"],
                             logs / "consumer.log").start()
        self.serve = Proc("serve", [pinrec, "serve", "--lake", str(self.lake), "--db", str(self.db),
                                    "--host", "127.0.0.1", "--port", str(self.serve_port)],
                          logs / "serve.log", env={"PINREC_API_TOKEN": self.token})
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        """A process manager's restart policy: what exits on its own is started again."""
        while not self._stop.wait(2):
            with self.lock:
                for p in (self.consumer, self.serve):
                    if p is not None and p.supervise():
                        print(f"rehearse: {p.name} exited on its own ({p.exits[-1][1]}); "
                              "started again", flush=True)

    def start_serve(self) -> None:
        with self.lock:
            self.serve.start()
        wait_until(lambda: self.serve.alive() and _healthy(self.serve_url), 180, "serving API health")

    def restart_serve(self) -> None:
        with self.lock:
            self.serve.stop()
            self.serve.start()
        wait_until(lambda: _healthy(self.serve_url), 180, "serving API health after a restart")

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            if self.traffic:
                self.traffic.stop()
            for p in (self.serve, self.consumer):
                if p is not None:
                    p.stop()
            for o in (self.broker, self.s3):
                if o is not None:
                    o.stop()


def _healthy(url: str) -> bool:
    from pinrec.rehearsal.services import http_json

    return http_json(f"{url}/healthz", timeout=3)[0] == 200


def fresh_messages(day: Day) -> list:
    """The next day's events, in time order, as (key, value, event_id)."""
    from streaming.replay import lake_events, user_key

    return [(user_key(e.user_id), e.to_bytes(), e.event_id)
            for e in lake_events(day.cfg.source_lake, day.fresh_ds, day.fresh_ds)]


def run_day(cfg: RehearsalConfig, stack, services: Services, token: str, ds: str,
            fault: Fault, acked_before: set) -> dict:
    from pinrec.core.layout import published_candidates

    day = Day(cfg, stack, services, token, ds)
    t0 = time.time()
    published_before = published_candidates(day.lake)
    print(f"\nrehearse: day {ds}: fault {fault.name} - {fault.description}", flush=True)
    fault.land(day)
    fault.before_run(day)
    msgs = fault.messages(day, fresh_messages(day))
    size = getattr(fault, "max_request_size", lambda: 1 << 20)()
    producer = AckedProducer(services.bootstrap, msgs, max_request_size=size)
    producer.start()
    fault.during_replay(day, producer)
    run_id = day.trigger()
    fault.during_run(day, run_id)
    state, tasks = day.wait_run(run_id, fault, cfg.day_timeout_s)
    producer.join(300)
    fault.after_run(day)
    day.notes.append(f"run {run_id}: {state}; tasks not successful: "
                     f"{ {t: s for t, s in tasks.items() if s not in ('success',)} or 'none'}")
    day.notes.append(f"replay of {day.fresh_ds}: {len(msgs)} messages, {len(producer.acked)} "
                     f"acknowledged, {producer.resent} re-sent (offset -1 or error), "
                     f"{len(producer.failed)} failed" + (f": {producer.error!r}" if producer.error else ""))
    checks = check_day(day, fault, state, tasks, published_before,
                       acked_before | producer.acked, t0)
    return {"ds": ds, "fault": fault.name, "description": fault.description, "run_id": run_id,
            "run_state": state, "tasks": tasks, "notes": day.notes, "gate": day.gate_record(),
            "checks": [c.as_dict() for c in day.checks + checks], "acked": producer.acked,
            "seconds": round(time.time() - t0, 1)}


def check_day(day: Day, fault: Fault, state: str, tasks: dict, published_before: str | None,
              acked: set, t0: float) -> list:
    from pinrec.core.layout import published_candidates

    cfg, s = day.cfg, day.services
    published = published_candidates(day.lake)
    checks = [inv.outcome(fault.expect_published, state, published, day.ds, published_before,
                          tasks.get("publish"))]
    if s.serve.popen is not None:
        health = day.wait_serving(published, 240)  # what the release names
        active, sample = day.sample_users(published, cfg.sample_users) if published else (set(), [])
        probe = day.probe(sample)
        checks.append(inv.served_consistency(health, published, {p[4] for p in probe}))
        checks += inv.answers([p[:4] for p in probe], cfg.p99_ms)
        checks.append(inv.traffic(s.traffic.window(t0, time.time()) if s.traffic else []))
        checks.append(inv.candidates_cover(active, day.candidate_users(published), published))
    # the speed layer: wait (bounded) for the consumer to catch up and to sweep
    last = {}

    def caught_up():
        ids, oldest = day.rocksdb()
        cutoff = day.batch_cutoff_us()
        want = acked & _still_after_cutoff(day)
        last.update(ids=ids, oldest=oldest, cutoff=cutoff, want=want)
        return want <= set(ids) and (oldest is None or cutoff is None or oldest >= cutoff)

    try:
        wait_until(caught_up, 240, "the consumer catching up and sweeping", every_s=3)
    except TimeoutError:
        pass
    live = list(last["ids"])
    checks += inv.stored_once(last["want"], live)
    checks.append(inv.retention(last["oldest"], last["cutoff"], len(live)))
    checks.append(inv.consumer_up([e for e in s.consumer.exits if e[0] >= t0]))
    if day.bad_markers:
        checks.append(inv.dead_lettered(day.bad_markers, day.dlq_values(), day.bad_sent))
    return checks


def _still_after_cutoff(day: Day) -> set:
    """Acknowledged events that retention must keep: those of days after the batch cutoff
    (the sweep rightly removes the older ones)."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    from pinrec.core.sequences_store import latest_sequences_ds

    cutoff_ds = latest_sequences_ds(DeltaRsTables(day.lake))
    src = DeltaRsTables(Lake.at(day.cfg.source_lake))
    keep = [d for d in src.partitions("events") if cutoff_ds is None or d > cutoff_ds]
    ids = set(src.read("events", keep, columns=["event_id"])["event_id"].to_pylist()) if keep else set()
    return ids


def rehearse(cfg: RehearsalConfig, pinrec: str) -> dict:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.airflow_stack import new_stack
    from pinrec.cli import main as pinrec_main
    from pinrec.core.layout import Lake
    from pinrec.rehearsal.report import is_expectation, write_report

    t_all = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    if (cfg.lake / "tables").exists():
        raise UserError(f"--lake {cfg.lake} already holds tables; a rehearsal starts from an "
                        "empty lake (give a new folder)")
    n_days = cfg.history_days + cfg.days + 1
    if not (cfg.source_lake / "tables" / "events").exists():
        rc = pinrec_main(["data", "synth", "--users", str(cfg.users), "--days", str(n_days),
                          "--items", str(cfg.items), "--start", cfg.start, "--seed", str(cfg.seed),
                          "--lake", str(cfg.source_lake)])
        if rc != 0:
            raise RuntimeError(f"pinrec data synth failed ({rc})")
    src = DeltaRsTables(Lake.at(cfg.source_lake))
    lake = DeltaRsTables(Lake.at(cfg.lake))
    for i in range(cfg.history_days):
        d = next_day(cfg.start, i)
        lake.replace_partitions("events", src.read("events", [d]), [d])
    services = Services(cfg.out, cfg.lake)
    result = {"config": _config_dict(cfg), "days": [], "bootstrap": None}
    stack = None
    try:
        services.start_speed_layer(pinrec)
        stack = new_stack(cfg.lake, {"PINREC_LANDING_POKE_S": str(cfg.poke_s)})
        stack.start()
        token = stack.token("ops")
        stack.wait_for_dag("pinrec_daily", token)
        stack.request("PATCH", "/api/v2/dags/pinrec_daily", {"is_paused": False}, token=token)
        acked: set = set()
        boot = run_day(cfg, stack, services, token, cfg.bootstrap_ds, Fault(), acked)
        acked |= boot.pop("acked")
        result["bootstrap"] = boot
        services.start_serve()
        # ops point the DAG's serving_health task at the API once it exists (a Variable wins
        # over the environment; before it, the task skips rather than fails)
        try:
            stack.request("POST", "/api/v2/variables", {"key": "PINREC_SERVING_URL",
                                                         "value": services.serve_url}, token=token)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise
        _, users = Day(cfg, stack, services, token, cfg.bootstrap_ds).sample_users(cfg.bootstrap_ds, 50)
        services.traffic = Traffic(services.serve_url, services.token, users)
        services.traffic.start()
        for i, name in enumerate(cfg.faults):
            ds = next_day(cfg.bootstrap_ds, i + 1)
            try:
                day = run_day(cfg, stack, services, token, ds, FAULTS[name](), acked)
            except Exception as e:  # noqa: BLE001 - one day's error must not hide the others
                import traceback

                traceback.print_exc()
                day = {"ds": ds, "fault": name, "description": FAULTS[name].description,
                       "run_id": None, "run_state": "unknown", "tasks": {}, "gate": None,
                       "notes": [f"the rehearsal itself failed this day: {e!r}"], "acked": set(),
                       "checks": [inv.Check("the day ran to its checks", False, repr(e)).as_dict()],
                       "seconds": 0.0}
            acked |= day.pop("acked")
            result["days"].append(day)
            result["wall_s"] = round(time.time() - t_all, 1)
            write_report(result, cfg.out)  # after every day: a long rehearsal cut short still reports
            broke = [c["name"] for c in day["checks"] if not c["ok"] and not is_expectation(c, name)]
            unmet = [c["name"] for c in day["checks"] if not c["ok"] and is_expectation(c, name)]
            print(f"rehearse: day {ds} ({name}) in {day['seconds']:.0f} s: "
                  + ("all invariants held" if not broke else f"BROKEN: {broke}")
                  + (f"; expectation not met: {unmet}" if unmet else ""), flush=True)
    finally:
        services.stop()
        if stack is not None:
            stack.stop()
            stack.cleanup(keep_logs_in=cfg.out / "airflow")
    result["wall_s"] = round(time.time() - t_all, 1)
    return result


def _config_dict(cfg: RehearsalConfig) -> dict:
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}
    d["dag_conf"] = cfg.dag_conf
    return d


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_lake_arg

    p.add_argument("--days", type=int, default=7, help=f"days to rehearse (faults in the order "
                   f"{', '.join(WEEK)}; more days repeat the week)")
    add_lake_arg(p)
    p.add_argument("--out", default="rehearsal-output", help="report, logs, source lake, RocksDB")
    p.add_argument("--faults", default=None,
                   help=f"comma list, one per day, instead of the week ({', '.join(FAULTS)})")
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--items", type=int, default=1_000)
    p.add_argument("--p99-ms", type=float, default=500.0, help="the latency bound the API must hold")


def run(args: argparse.Namespace) -> int:
    from pinrec.demo import pinrec_bin
    from pinrec.rehearsal.report import is_expectation, write_report

    faults = tuple(f for f in (args.faults.split(",") if args.faults else
                               [WEEK[i % len(WEEK)] for i in range(args.days)]) if f)
    if unknown := [f for f in faults if f not in FAULTS]:
        raise UserError(f"--faults: unknown {unknown}; known: {sorted(FAULTS)}")
    if args.days < 1 or (args.faults and len(faults) != args.days):
        raise UserError(f"--days {args.days} needs as many --faults entries (got {len(faults)})")
    cfg = RehearsalConfig(lake=Path(args.lake).resolve(), out=Path(args.out).resolve(),
                          faults=faults, users=args.users, items=args.items, p99_ms=args.p99_ms)
    result = rehearse(cfg, pinrec_bin())
    json_path, md_path = write_report(result, cfg.out)
    broken = [(d["ds"], c["name"]) for d in result["days"] + [result["bootstrap"]] if d
              for c in d["checks"] if not c["ok"] and not is_expectation(c, d["fault"])]
    print(f"rehearse: {len(result['days'])} days in {result['wall_s']:.0f} s; report {md_path}")
    if broken:
        print(f"rehearse: {len(broken)} invariant(s) broke: {broken}", file=sys.stderr)
        return 1
    return 0
