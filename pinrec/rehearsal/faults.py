"""The faults a rehearsal injects, one per day. Each fault overrides the hooks it needs:

    land(ctx)                     land the day's events partition (default: on time, valid)
    before_run(ctx)               after landing, before the DAG run is created
    messages(ctx, msgs)           the fresh events the replay sends (add bad ones)
    during_replay(ctx, producer)  while the producer sends the next day's events
    during_run(ctx, run_id)       once the DAG run exists
    on_task_failed(ctx, run_id, ti) -> bool   ops' reaction to a failed try (True: handled)

and says what the day must end with (`expect_published`). `ctx` is the runner's Day.
Each fault appends what it saw and did to `ctx.notes`, for the report.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid

OVERSIZED_BYTES = 2_000_370  # the event that stopped the speed layer for good (issue 13)


class Fault:
    name = "none"
    description = "no fault: a normal day"
    expect_published = True

    def land(self, ctx) -> None:
        ctx.land_events()

    def before_run(self, ctx) -> None:
        pass

    def messages(self, ctx, msgs: list) -> list:
        return msgs

    def during_replay(self, ctx, producer) -> None:
        pass

    def during_run(self, ctx, run_id: str) -> None:
        pass

    def on_task_failed(self, ctx, run_id: str, ti: dict) -> bool:
        return False

    def after_run(self, ctx) -> None:
        pass


class LateLanding(Fault):
    name = "late_landing"
    description = "the day's events partition lands after the run started"

    def land(self, ctx) -> None:
        pass  # not yet: the run must wait for it

    def during_run(self, ctx, run_id: str) -> None:
        st = ctx.wait_task_state(run_id, "wait_for_landing", ("up_for_reschedule",), 240)
        later = ctx.task_states(run_id)
        started = sorted(t for t, s in later.items() if t not in ("wait_for_landing", "validate_params")
                         and s not in (None, "scheduled", "queued", "no_status"))
        ctx.notes.append(f"sensor: {st}; tasks started while the partition was missing: "
                         f"{started or 'none'}")
        ctx.check("late landing: nothing ran before the partition landed", not started, started)
        time.sleep(ctx.cfg.late_by_s)
        ctx.land_events()
        ctx.notes.append(f"partition landed {ctx.cfg.late_by_s:.0f} s after the sensor first waited")


class BadSchema(Fault):
    name = "bad_schema"
    description = ("a landing file with a bad schema (user_id and ts as strings); ops replace "
                   "the partition and clear the failed task through the REST API")

    def land(self, ctx) -> None:
        ctx.land_bad_schema_file()

    def on_task_failed(self, ctx, run_id: str, ti: dict) -> bool:
        if getattr(self, "_fixed", False):
            return False
        self._fixed = True
        log = ctx.stack.task_log_tail("pinrec_daily", run_id, ti["task_id"], 20_000)
        ctx.notes.append(f"task {ti['task_id']} failed (try {ti.get('try_number')}); its log says: "
                         + error_lines(log))
        # clear = names the table, the bad column and the type the contract wants
        clear = all(w in log for w in ("events", "user_id", "int64"))
        ctx.check("bad schema: the failing task's log names the table, the column and the "
                  "type wanted", clear, f"{ti['task_id']}: {error_lines(log)}")
        ctx.land_events()  # ops: replace the partition with the corrected file
        if ti["state"] == "failed":
            # let the scheduler finish failing the run first: a clear made while it still marks
            # the downstream tasks upstream_failed loses the race (seen: train upstream_failed
            # after the clear)
            ctx.wait_run_state(run_id, ("failed",), 300)
        cleared = ctx.stack.clear_tasks("pinrec_daily", run_id, [ti["task_id"]], ctx.token)
        ctx.notes.append(f"ops replaced events ds={ctx.ds} and cleared {len(cleared)} task(s) "
                         "via POST /api/v2/dags/pinrec_daily/clearTaskInstances")
        return True

    def after_run(self, ctx) -> None:
        """The re-run after the fix is idempotent: the day's tables are what one clean run
        writes (sequences of exactly the users with events before the cutoff, no duplicate
        candidate rows), whatever the failed try had written."""
        seq_users, expected, dup = ctx.rerun_tables()
        ctx.check("bad schema: the re-run after the fix is idempotent",
                  seq_users == expected and dup == 0,
                  f"sequences hold {len(seq_users)} users, {len(expected)} expected "
                  f"(events before the cutoff); {dup} duplicate candidate rows")


class ConsumerKill(Fault):
    name = "consumer_kill9"
    description = "kill -9 of `pinrec stream consume` in the middle of the replay"

    def during_replay(self, ctx, producer) -> None:
        producer.wait_acked(len(producer.messages) // 3)
        stored = ctx.consumer_handled()
        ctx.services.consumer.kill9()
        ctx.notes.append(f"consumer killed (-9) after {len(producer.acked)} acknowledged sends, "
                         f"{stored:.0f} events handled by it so far")
        time.sleep(2)
        ctx.services.consumer.start()


class BrokerRestart(Fault):
    name = "broker_restart"
    description = "Tansu (s3 engine over moto) restarted in the middle of the replay"

    def during_replay(self, ctx, producer) -> None:
        producer.wait_acked(len(producer.messages) // 3)
        t0 = time.time()
        ctx.services.broker.restart()
        ctx.notes.append(f"broker restarted after {len(producer.acked)} acknowledged sends "
                         f"({time.time() - t0:.1f} s down)")


class ServeRestart(Fault):
    name = "serve_restart"
    description = "`pinrec serve` restarted (SIGTERM, start) while traffic flows"

    def during_run(self, ctx, run_id: str) -> None:
        t0 = time.time()
        ctx.services.restart_serve()
        ctx.notes.append(f"serving API restarted under traffic; healthy again after "
                         f"{time.time() - t0:.1f} s")


class BadMessages(Fault):
    name = "bad_messages"
    description = (f"malformed messages and one oversized event ({OVERSIZED_BYTES:,} bytes of "
                   "query_text) amid the replay")

    def messages(self, ctx, msgs: list) -> list:
        # one marker per bad message, near its start: the DLQ check finds each one (copies of
        # one message re-dead-lettered by a crash loop must not count for another)
        tag = uuid.uuid4().hex[:10]
        m = [f"{tag}-{i}" for i in range(4)]
        bad = [b"{not json " + m[0].encode(),
               json.dumps({"marker": m[1], "user_id": 1}).encode(),
               json.dumps({"marker": m[2], "event_id": f"bad-{m[2]}", "user_id": 1, "item_id": 1,
                           "item_type": "pin", "action": "no_such_action", "surface": "homefeed",
                           "ts": 0}).encode()]
        big = json.dumps({"event_id": f"oversized-{m[3]}", "user_id": 1, "item_id": 1,
                          "item_type": "pin", "action": "repin", "surface": "search",
                          "ts": ctx.fresh_start_us, "query_text": ""}).encode()
        big = big.replace(b'"query_text": ""', b'"query_text": "' + b"q" * (OVERSIZED_BYTES - len(big)) + b'"')
        ctx.bad_markers = m
        ctx.bad_sent = len(m)
        mid = len(msgs) // 2
        return msgs[:mid] + [(None, v, None) for v in bad] + [(None, big, None)] + msgs[mid:]

    def max_request_size(self) -> int:
        return 4 << 20


class BrokenModel(Fault):
    name = "broken_model"
    description = ("the day's model is a checkpoint with NaN weights (planted where `train` "
                   "finds it); the gate must fail and the previous day keep serving")
    expect_published = False

    def before_run(self, ctx) -> None:
        src = ctx.serving_model_dir()
        dst = ctx.lake.version_dir("models", ctx.model_version)
        plant_nan_model(src, dst)
        ctx.notes.append(f"planted {dst.name}: a copy of {src.name} with every weight NaN")

    def on_task_failed(self, ctx, run_id: str, ti: dict) -> bool:
        """A broken model does not get better by retrying: ops mark the failed try failed
        (instead of waiting out the retries) so the run stops before publish."""
        if ti["task_id"] in self.__dict__.setdefault("_seen", set()):
            return True
        self._seen.add(ti["task_id"])
        log = ctx.stack.task_log_tail("pinrec_daily", run_id, ti["task_id"], 20_000)
        ctx.notes.append(f"task {ti['task_id']} {ti['state']} (try {ti.get('try_number')}): "
                         + error_lines(log))
        if ti["state"] == "up_for_retry":
            ctx.stack.request("PATCH", f"/api/v2/dags/pinrec_daily/dagRuns/{run_id}/taskInstances/"
                              f"{ti['task_id']}", {"new_state": "failed"}, token=ctx.token)
            ctx.notes.append(f"ops marked {ti['task_id']} failed through the REST API (a NaN "
                             "model does not get better by retrying)")
        return True

    def after_run(self, ctx) -> None:
        """Whatever task stopped the run, would the quality gate itself have refused it?"""
        rc, out = ctx.gate_check(ctx.model_version)
        ctx.notes.append(f"`pinrec gate check` run on the planted model: exit {rc}: {out}")
        ctx.check("the quality gate refuses the broken model", rc != 0, out)


def plant_nan_model(src, dst) -> None:
    from safetensors.torch import load_file, save_file
    import torch

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        state = load_file(f)
        save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                   for k, v in state.items()}, f)


def error_lines(log: str, n: int = 4) -> str:
    """The last lines of a task log that look like an error, for the report: the command's own
    `pinrec ...: error: ...` lines first (Airflow's JSON log wraps them in "event")."""
    import re

    own = [m.group(1) for m in re.finditer(r'"event":"((?:pinrec [a-z]+: error|[A-Za-z.]*Error)[^"]*)"', log)]
    if own:
        return " | ".join(own[-n:])[-800:]
    keep = [ln.strip() for ln in log.splitlines()
            if any(w in ln for w in ("rror", "FAILED", "Exception", "exited"))]
    if keep:
        return " | ".join(keep[-n:])[-800:]
    return log.strip().splitlines()[-1][-800:] if log.strip() else "(empty log)"


FAULTS = {f.name: f for f in (Fault, LateLanding, BadSchema, ConsumerKill, BrokerRestart,
                              ServeRestart, BadMessages, BrokenModel)}
WEEK = ("late_landing", "bad_schema", "consumer_kill9", "broker_restart", "serve_restart",
        "bad_messages", "broken_model")
