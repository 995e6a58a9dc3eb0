"""`pinrec demo` (`make demo`): the whole pipeline end to end on the embedded default.

1. synthesise a lake of events (or import a real dataset with --import SOURCE PATH)
2. the batch day, exactly the chain `pinrec_daily` runs (pinrec/core/pipeline.py: DAILY), as
   `pinrec` sub-commands: landing check, params, sequences, items, train, index, score, quality
   gate, publish
3. the speed layer: a Tansu broker, `pinrec stream consume`, and a replay of the next day's
   events (fresh signals newer than the batch cutoff)
4. serving: `pinrec serve`, then merged recommendations for a few users printed next to their
   recent history
5. a Markdown report with step timings and PNG plots under <out>/report/
6. the closed loop (synthetic lakes): two days of users responding to what the API serves them
   under two arms, `pinrec outcomes` per day and `pinrec report arms` (<out>/report/arms/)

Every process it starts is stopped by pid before it returns, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from pinrec.core import pipeline
from pinrec.core.budgets import DEFAULT_ARMS as ARMS  # the closed loop compares its balanced and repin arms


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    users: int = 1_000
    days: int = 30
    items: int = 2_000
    seed: int = 0
    start: str = "2026-01-01"
    variant: str = "mt_oc"
    # Training fitted to the demo's data (1,000 users: ~1,500 windows). The trainer's defaults
    # (batch 128, 100 warm-up steps) give 12 steps an epoch, so a 90 s run never left warm-up
    # and its outcome-conditioned candidates were no more visual for `repin` than the base rate
    # (bench/results/closed_loop_conditioning_probe.json). Batch 32 with 20 warm-up steps and a
    # fixed epoch count conditions (docs/adr/0006b-arm-outcomes.md); the seconds are a guard.
    train_epochs: int = 4
    train_batch_size: int = 32
    train_warmup: int = 20
    train_seconds: int = 420
    show_users: int = 3
    import_source: tuple[str, str] | None = None
    days_in_lake: tuple[str, str] | None = None  # (batch ds, fresh ds) read from the lake
    loop_days: int = 3  # days of the closed loop after the fresh day (synthetic lakes only)

    @property
    def lake(self) -> Path:
        return self.out / "lake"

    @property
    def ds(self) -> str:
        """The batch day: the day before the last day of events, whose events are replayed."""
        from datetime import datetime, timedelta

        if self.days_in_lake:
            return self.days_in_lake[0]
        first = datetime.strptime(self.start, "%Y-%m-%d")
        return (first + timedelta(days=self.days - 2)).strftime("%Y-%m-%d")

    @property
    def fresh_ds(self) -> str:
        from datetime import datetime, timedelta

        if self.days_in_lake:
            return self.days_in_lake[1]
        return (datetime.strptime(self.ds, "%Y-%m-%d") + timedelta(days=1)).strftime("%Y-%m-%d")

    @property
    def model_version(self) -> str:
        return demo_run(self).model_version


@dataclass
class Timings:
    steps: list[tuple[str, float, str]] = field(default_factory=list)  # (name, seconds, status)

    def add(self, name: str, seconds: float, status: str = "ok") -> None:
        self.steps.append((name, seconds, status))
        print(f"demo: {name:<28} {seconds:7.1f} s  {status}", flush=True)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", help="output folder (lake, logs, report)")
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-epochs", type=int, default=DemoConfig.train_epochs,
                   help="training epochs (batch 32, 20 warm-up steps: fitted to the demo's size)")
    p.add_argument("--train-seconds", type=int, default=DemoConfig.train_seconds,
                   help="wall-clock guard on training (a loaded machine stops it before its epochs)")
    p.add_argument("--loop-days", type=int, default=DemoConfig.loop_days,
                   help="days of the closed loop (synthetic lakes; 0 skips it)")
    p.add_argument("--import", dest="import_source", nargs=2, metavar=("SOURCE", "PATH"),
                   help="import a real dataset instead of synthesising (see `pinrec data import`)")


def run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(out=Path(args.out).resolve(), users=args.users, days=args.days,
                     items=args.items, seed=args.seed, train_seconds=args.train_seconds,
                     train_epochs=args.train_epochs,
                     loop_days=args.loop_days,
                     import_source=tuple(args.import_source) if args.import_source else None)
    procs = Procs(cfg.out / "logs")
    timings = Timings()
    t_all = time.perf_counter()
    try:
        cfg = load_data(cfg, timings)
        return _run(cfg, procs, timings)
    finally:
        procs.stop_all()
        timings.add("total", time.perf_counter() - t_all)
        from pinrec.demo_report import write_report

        report = write_report(cfg, timings.steps)
        print(f"demo: report written to {report}")


def pinrec_bin() -> str:
    return os.environ.get("PINREC_BIN") or str(Path(sys.executable).with_name("pinrec"))


def step(timings: Timings, name: str, argv: list[str], log_dir: Path) -> None:
    """Run one `pinrec` sub-command as its own process, as an Airflow task does."""
    t0 = time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"\n$ pinrec {' '.join(argv)}", flush=True)
    rc = subprocess.run([pinrec_bin(), *argv]).returncode
    timings.add(name, time.perf_counter() - t0, "ok" if rc == 0 else f"exit {rc}")
    if rc != 0:
        raise SystemExit(f"demo: `pinrec {' '.join(argv)}` failed with exit code {rc}; "
                         "fix the error above and run `make demo` again")


def batch_day(cfg: DemoConfig, timings: Timings) -> None:
    """The daily chain (pinrec.core.pipeline.DAILY, what pinrec_daily runs), one step after another."""
    ctx = demo_run(cfg)
    for s in pipeline.DAILY:
        if s.reuse_if is not None and Path(s.reuse_if(ctx)).exists():
            print(f"demo: {s.name}: {s.reuse_if(ctx)} exists (versions are immutable): reusing it")
            continue
        step(timings, s.name.replace("_", " "), s.argv(ctx), cfg.out / "logs")


def demo_run(cfg: DemoConfig) -> pipeline.RunContext:
    """The DAG's run for the demo's batch day: its arms and variant, training fitted to its size,
    and no warm start (a full retrain every day: the demo trains one model)."""
    given = {"arms": ARMS, "variant": cfg.variant, "train_max_seconds": cfg.train_seconds,
             "full_retrain_every_days": 1}
    train = ("--epochs", str(cfg.train_epochs), "--batch-size", str(cfg.train_batch_size),
             "--warmup", str(cfg.train_warmup),
             # 1,000 users: the 500-user floor would hold out half of them; the demo holds out
             # 5 % (50 users) for its gate instead
             "--holdout-fraction", "0.05", "--holdout-min-users", "0")
    return pipeline.RunContext(cfg.ds, str(cfg.lake), given, train_args=train)


def load_data(cfg: DemoConfig, timings: Timings) -> DemoConfig:
    """Synthesise (or import) events unless the lake has them; the last two days become the
    batch day and the fresh day."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    logs = cfg.out / "logs"
    if not (cfg.lake / "tables" / "events").exists():
        if cfg.import_source:
            step(timings, "data import", ["data", "import", *cfg.import_source, "--lake", str(cfg.lake)], logs)
        else:
            step(timings, "data synth", ["data", "synth", "--users", str(cfg.users), "--days",
                                         str(cfg.days), "--items", str(cfg.items), "--seed",
                                         str(cfg.seed), "--start", cfg.start, "--lake", str(cfg.lake)], logs)
    return replace(cfg, days_in_lake=last_two_days(cfg.lake))


def _run(cfg: DemoConfig, procs: "Procs", timings: Timings) -> int:
    logs = cfg.out / "logs"
    batch_day(cfg, timings)

    from streaming.broker import Tansu, create_topics, free_port

    t0 = time.perf_counter()
    broker = procs.keep("tansu", Tansu.start(log=logs / "tansu.log"))
    create_topics(broker.bootstrap, {"engagements": 2, "engagements-dlq": 1})
    db = cfg.out / "realtime" / "rocksdb"
    metrics_port = free_port()
    procs.spawn("consumer", [pinrec_bin(), "stream", "consume", "--lake", str(cfg.lake),
                             "--bootstrap", broker.bootstrap, "--db", str(db),
                             "--metrics-port", str(metrics_port)])
    timings.add("start broker + consumer", time.perf_counter() - t0)

    t0 = time.perf_counter()
    step(timings, "replay fresh events", ["stream", "replay", "--lake", str(cfg.lake), "--bootstrap",
                                          broker.bootstrap, "--from-lake", cfg.fresh_ds, cfg.fresh_ds], logs)
    seen = wait_consumed(metrics_port, expected=count_events(cfg.lake, cfg.fresh_ds), timeout_s=120)
    timings.add("consumer caught up", time.perf_counter() - t0, f"{seen} events")

    t0 = time.perf_counter()
    token = secrets.token_urlsafe(16)
    port = free_port()
    # the closed loop's users name no arm: serving splits them evenly over the demo's arms
    traffic = ",".join(f"{a}={1.0 / len(ARMS)}" for a in sorted(ARMS))
    procs.spawn("serve", [pinrec_bin(), "serve", "--lake", str(cfg.lake), "--db", str(db),
                          "--host", "127.0.0.1", "--port", str(port), "--traffic", traffic],
                env={"PINREC_API_TOKEN": token})
    wait_http(f"http://127.0.0.1:{port}/healthz", 120, procs.procs["serve"])
    timings.add("start serving API", time.perf_counter() - t0)

    from pinrec.demo_report import show_recommendations

    show_recommendations(cfg, f"http://127.0.0.1:{port}", token)
    if cfg.loop_days > 0 and not cfg.import_source:
        closed_loop(cfg, timings, broker.bootstrap, metrics_port, f"http://127.0.0.1:{port}", token)
    return 0


def last_two_days(lake: Path) -> tuple[str, str]:
    """The batch day and the fresh day: the last two `events` partitions (synthetic or imported)."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    days = DeltaRsTables(Lake.at(lake)).partitions("events")
    if len(days) < 2:
        raise SystemExit(f"demo: the lake {lake} has {len(days)} day(s) of events; it needs two "
                         "(one batch day and one day of fresh events to replay)")
    return days[-2], days[-1]


def count_events(lake: Path, ds: str) -> int:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    return DeltaRsTables(Lake.at(lake)).dataset("events", ds=[ds]).count_rows()


def wait_consumed(port: int, expected: int, timeout_s: float) -> int:
    """Count what the consumer handled (stored + skipped as stale + DLQ): Tansu's high
    watermarks are wrong (DESIGN.md §4), so progress is counted, not computed from lag."""
    deadline, seen = time.time() + timeout_s, 0
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
            seen = sum(float(line.split()[1]) for line in text.splitlines()
                       if line.split(" ")[0] in ("pinrec_stream_events_stored_total",
                                                 "pinrec_stream_stale_skipped_total",
                                                 "pinrec_stream_dlq_total"))
            if seen >= expected:
                return int(seen)
        except OSError:
            pass
        time.sleep(0.5)
    print(f"demo: the consumer handled {int(seen)} of {expected} events in {timeout_s} s; going on")
    return int(seen)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {proc.args[1:3]} exited with {proc.returncode}; see demo-output/logs")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 without a token is fine): it is up
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"demo: {url} did not answer in {timeout_s} s")


class Procs:
    """Long-running processes of the demo, each in its own process group, stopped by pid."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.objects: dict[str, object] = {}

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        self.procs[name] = p
        return p

    def keep(self, name: str, obj):
        self.objects[name] = obj  # something with .stop(), e.g. the Tansu broker
        return obj

    def stop_all(self) -> None:
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
        for obj in reversed(list(self.objects.values())):
            obj.stop()


# -- the closed loop (issue 17): users respond to what the API serves under two arms ------------

def closed_loop(cfg: DemoConfig, timings: Timings, bootstrap: str, metrics_port: int, api: str,
                token: str) -> None:
    """`loop_days` days of serving/responding (serving/closed_loop.py), then `pinrec outcomes`
    per day and `pinrec report arms` over them; prints the repin arm's realised repin share
    against the balanced arm's, with the 95 % interval of the difference."""
    from jobs.synth import SynthConfig
    from serving.closed_loop import LoopConfig, resume_world, simulate_day

    lake, logs = str(cfg.lake), cfg.out / "logs"
    synth = SynthConfig(users=cfg.users, days=cfg.days, seed=cfg.seed, items=cfg.items, start=cfg.start)
    state = resume_world(synth, cfg.lake)
    loop = LoopConfig(cfg.lake, api, token, bootstrap, synth,
                      arms=tuple((a, 1.0 / len(ARMS)) for a in sorted(ARMS)))
    handled = count_events(cfg.lake, cfg.fresh_ds)  # the consumer has these already
    days = []
    for _ in range(cfg.loop_days):
        t0 = time.perf_counter()
        day = simulate_day(loop, state)
        handled = wait_consumed(metrics_port, expected=handled + day["events"], timeout_s=120)
        timings.add(f"closed loop {day['ds']}", time.perf_counter() - t0,
                    f"{day['served_users']} served, {day['responses']} responses")
        days.append(day["ds"])
    for ds in days:
        step(timings, f"outcomes {ds}", ["outcomes", "--ds", ds, "--lake", lake], logs)
    out = cfg.out / "report" / "arms"
    step(timings, "report arms", ["report", "arms", "--from", days[0], "--to", days[-1],
                                  "--out", str(out), "--lake", lake], logs)
    stats = json.loads((out / "arms.json").read_text())
    share = {a: stats["arms"][a]["realised_share"]["repin"] for a in ("balanced", "repin")}
    d = stats["differences"]["repin"]["repin"]
    print(f"\ndemo: realised repin share {days[0]}..{days[-1]}: arm repin "
          f"{100 * share['repin']['value']:.1f} % vs arm balanced {100 * share['balanced']['value']:.1f} %"
          f" (budgets 100 % / 40 %); difference {100 * d['diff']:+.1f} pp, 95 % interval "
          f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] pp")
    print(f"demo: arm report {out / 'index.html'}")
