"""The processor: takes batches while it has room, runs their tasks, keeps its leases.

Everything runs in one ``asyncio.TaskGroup``. SIGTERM stops claiming; in-flight tasks get
``DRAIN_S`` to finish; what is left is handed back to the queue at once (leases released, a
new batch entry queued) so another processor takes it without waiting for a lease to expire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio.client import PubSub

from services.processor import provider, routing, telemetry
from services.processor.ai_status import ProviderStatus
from services.processor.breakers import Breakers
from services.processor.deadlines import SWEEP_S, DeadlineSweeper
from services.processor.governor import Governor
from services.processor.leases import LeaseKeeper
from services.processor.runner import (
    FINISHED,
    BatchEntry,
    Outcome,
    RunDeps,
    RunPolicy,
    TaskRun,
)
from services.processor.settings import ProcessorSettings
from shared import groups, logs, metrics
from shared.governor import BreakerPolicy, GovernorSteps
from shared.keys import BATCHES_GROUP, Keys
from shared.loops import cancel_if_asked, forever, sleep_unless, until_redis_answers
from shared.redis_conn import UNAVAILABLE, WAIT_OUT, RedisClient
from shared.runtime import ServiceGroup
from shared.steps import Steps
from shared.store import BatchRow, Store, store_broken, store_unavailable
from shared.timeutil import now_ms

log = logs.get("sluice.processor")
POLL_S = 1.0  # a blocking read or pub/sub wait returns this often to look at `stopping`
BURST_POLL_S = 0.01  # in burst mode: the run ends a few ms after its work does
# Capacity reports go at most this often. Under load nearly every finished task asks for one,
# a round trip each (1.16 a task, 4% of the processor's CPU in the e2e bench's profile); the
# ones asked for within the gap go together as the next. The first after a quiet spell goes
# at once, so an idle processor is still told at once.
REPORT_GAP_S = 0.002


class Processor:
    def __init__(self, settings: ProcessorSettings, redis: RedisClient, store: Store,
                 http: routing.Router) -> None:
        self.settings, self.redis, self.store, self.http = settings, redis, store, http
        self.name = settings.name
        self.keys = Keys(settings.common.redis_prefix)
        self.steps = Steps(redis, self.keys)
        pv = settings.provider
        self.router = http
        b = settings.breaker
        self.breakers = Breakers(
            GovernorSteps(redis, self.keys, settings.limits),
            BreakerPolicy(b.failures, int(b.cooldown_s * 1000), int(b.max_cooldown_s * 1000),
                          probe_ms=int(min(pv.ai_timeout_s, 60.0) * 1000)),
            http.names)
        self.governor = Governor(
            redis, self.keys, name=self.name, enabled=settings.governor, limits=settings.limits,
            lease_ms=settings.batching.lock_ttl_ms, base_url=pv.ai_base_url.get(),
            api_key=pv.ai_api_key.get() if pv.ai_api_key else None, model=pv.ai_model,
            on_change=self._room_changed,
            retry_after_cap_s=settings.retry_after_cap_s, governed=http.governed(),
            breakers=self.breakers)
        self.sweeper = DeadlineSweeper(redis, self.keys, self.governor.steps,
                                       settings.retention_s, on_expired=self._row_for_expired)
        self.leases = LeaseKeeper(redis, self.steps, self.keys, self.name,
                                  settings.batching.lock_ttl_ms)
        self.deps = RunDeps(
            steps=self.steps, store=store,
            call=routing.route_caller(telemetry.observed(
                lambda target, request, on_deltas, on_headers, answer: provider.complete(
                    target.client, target.settings, request, on_deltas, on_headers, answer))),
            leases=self.leases, status=ProviderStatus(redis, self.keys),
            policy=RunPolicy(max_attempts=settings.max_attempts,
                             retry_base_s=settings.retry_base_s,
                             retry_cap_s=settings.retry_cap_s,
                             retry_after_cap_s=settings.retry_after_cap_s,
                             lock_ttl_ms=settings.batching.lock_ttl_ms,
                             retention_s=settings.retention_s,
                             unstored_retention_s=settings.unstored_retention_s,
                             task_deadline_s=settings.task_deadline_s),
            processor=self.name, governor=self.governor, router=http)
        self.runs: dict[str, TaskRun] = {}
        self.inflight = 0
        self.room = asyncio.Event()
        self.room.set()
        self.stopping = asyncio.Event()
        self.drained = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._report_due = asyncio.Event()
        self._taken = 0
        self._reported_at = -REPORT_GAP_S  # loop time of the last capacity report
        self._burst = False
        self._poll_s = POLL_S
        self.store_moved: str | None = None  # what happened to the SQLite file, while it lasts

    # --- lifecycle ----------------------------------------------------------------------------
    async def _ensure_group(self) -> None:
        await groups.ensure_group(self.redis, self.keys.batches_stream, BATCHES_GROUP)

    async def run(self, *, burst: bool = False) -> None:
        """Run until stopped. ``burst`` (arq's burst mode, for tests that run the real loop in
        process): stop by itself, draining as on a signal, once no batch entry is new or
        pending and nothing is in flight."""
        if burst:
            self._burst, self._poll_s = True, BURST_POLL_S
        await until_redis_answers(self._ensure_group, "groups")
        log.info("processor_started", name=self.name, concurrency=self.settings.concurrency)
        async with ServiceGroup() as tg:
            self._tg = tg
            tg.create_task(self.leases.run(self.stopping, self.drained))
            tg.create_task(self._forever(self._heartbeat, "heartbeat",
                                         self.settings.heartbeat_s))
            tg.create_task(self._forever(self._report_when_due, "capacity"))
            tg.create_task(self._forever(self._listen_cancels, "cancels"))
            tg.create_task(self._forever(self._reclaim_once, "reclaim",
                                         self.settings.reclaim_interval_s))
            tg.create_task(self.governor.run(self.stopping, self.drained))
            tg.create_task(self._forever(self.sweeper.sweep_once, "deadlines", SWEEP_S))
            await self._forever(self._claim_once, "claim")
            await self._drain()
            self.drained.set()
        await self._retire()
        log.info("processor_stopped", name=self.name)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("draining", in_flight=self.inflight, drain_s=self.settings.drain_s)
            self.stopping.set()
            self.room.set()
            self._report_due.set()  # wake the reporter so its loop sees we are stopping

    async def _forever(self, step: Any, what: str, pause: float = 0.0) -> None:
        await forever(step, what, self.stopping, pause=pause, recreate_groups=self._ensure_group)

    async def _sleep(self, seconds: float) -> None:
        await sleep_unless(self.stopping, seconds)

    async def _drain(self) -> None:
        pending = set(self._batches)
        if pending:
            _done, pending = await asyncio.wait(pending, timeout=self.settings.drain_s)
        if pending:
            log.warning("handing_off", tasks=len(self.runs))
            for run in list(self.runs.values()):
                run.interrupt(Outcome.HANDOFF)
            await asyncio.wait(pending)

    async def _retire(self) -> None:
        """Leave the pool: no capacity advertised for a processor that is gone."""
        k = self.keys
        try:
            async with self.redis.pipeline(transaction=False) as p:
                p.zrem(k.processors_alive, self.name)
                p.hdel(k.processors_free, self.name)
                p.hdel(k.processors_inflight, self.name)
                p.hdel(k.processors_room, self.name)
                p.hdel(k.providers_seen, self.name)
                await p.execute()
        except UNAVAILABLE:
            pass

    async def _row_for_expired(self, task_id: str) -> None:
        """A task whose deadline passed while it waited gets its row now, not once a batch
        brings it to a processor (while the provider is paused, that may be long). A store
        that takes no writes now (its file moved, a full disk) leaves that to the batch."""
        try:
            await TaskRun(self.deps, task_id, "").ensure_row_for_terminal()
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            log.warning("expired_row_not_saved", task_id=task_id, error=str(exc))

    # --- the store's file -------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        await self._watch_store()
        await self._safe_report()
        await self._report_providers()

    async def _report_providers(self) -> None:
        """Each provider as this processor sees it, for /api/ai-status: what the edge's own
        environment cannot say (the edge has no provider key, and may have no AI_BASE_URL)."""
        now, seen = now_ms(), []
        rooms = self.governor.rooms
        for target in self.router.governed() or []:
            spec, breaker = target.spec, self.breakers.seen.get(target.name)
            room = rooms.get(target.route.governor)
            error = self.breakers.errors.get(target.name)
            seen.append({
                "name": spec.name, "base_url": spec.shown_url,
                "api_key_configured": spec.api_key is not None,
                "breaker": None if breaker is None else {
                    "state": breaker.state, "failures": breaker.failures,
                    "open_until": breaker.open_until or None},
                "window": None if room is None else room.limit,
                "in_flight": None if room is None else room.in_flight,
                "last_error": error[0] if error else None,
                "last_error_at": error[1] if error else None})
        await self.redis.hset(self.keys.providers_seen, self.name,
                              orjson.dumps({"at": now, "providers": seen}))

    async def _watch_store(self) -> None:
        """Is the SQLite file at STORE_PATH still the one we opened? The store refuses every
        write while it is not (shared/store_sqlite.py); here the processor stops taking work
        and leaves the pool (no heartbeat: its healthcheck fails, /api/async-status no longer
        counts it). Its tasks are not given up: a finished answer is kept, its write retried
        while the lease holds, and goes in once the file is back (renamed back, the same
        file). Not handed off: every processor on the host sees the same file. A restarted
        processor opens what is there then, if it is this deployment's."""
        moved = self.store.moved()
        if moved == self.store_moved:
            return
        self.store_moved = moved
        self._set_inflight(0)  # claim again, or not
        if moved is None:
            log.info("store_back")
            return
        log.error("store_moved", problem=moved, in_flight=self.inflight)
        await self._retire()

    # --- capacity -----------------------------------------------------------------------------
    @property
    def free(self) -> int:
        """Slots we offer: our own, and no more than the provider's governor has room for."""
        if self.stopping.is_set() or self.store_moved is not None:
            return 0
        return max(0, min(self.settings.concurrency - self.inflight, self._provider_room()))

    def _provider_room(self) -> int:
        """The governor's room less our tasks that will need a call but hold no slot yet
        (claimed, not yet asking): without them, one claim reports the same room twice and
        the coordinators flush past the provider's limit."""
        g = self.governor
        if not g.enabled:
            return g.room()
        return g.room() - max(0, self.inflight - g.waiting - len(g.held))

    def _room_changed(self, opened: bool) -> None:
        """The governor's room opened or closed: claim (or stop claiming). An opening is told
        to the coordinators at once (a waiting batch leaves); a closing waits for the next
        report, since a batch flushed meanwhile only waits in Redis."""
        self._set_inflight(0)
        if opened:
            self._report_due.set()

    async def _report_capacity(self, taken: int = 0) -> None:
        if self.store_moved is not None:
            return  # out of the pool until the store's file is back
        expiry = now_ms() + int(self.settings.heartbeat_s * 3000)
        await self.steps.report_capacity(name=self.name, free=self.free, expiry_ms=expiry,
                                         taken=taken, inflight=self.inflight,
                                         room=max(0, self._provider_room()))

    def _set_inflight(self, delta: int) -> None:
        self.inflight += delta
        if self.free > 0:
            self.room.set()
        else:
            self.room.clear()

    # --- claiming -----------------------------------------------------------------------------
    async def _claim_once(self) -> None:
        await self.room.wait()
        if self.stopping.is_set():
            return
        reply: Any = await self.redis.xreadgroup(
            BATCHES_GROUP, self.name, {self.keys.batches_stream: ">"}, count=1,
            block=int(self._poll_s * 1000))
        read = False
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                read = True
                await self._start(entry_id, fields, fresh=True)
        if self._burst and not read and await self._idle():
            self.stop()

    async def _idle(self) -> bool:
        """Nothing in flight here, and no batch entry read but not yet acknowledged by anyone
        (a dead processor's entries are pending until reclaimed)."""
        if self._batches or self.runs:
            return False
        pending = await self.redis.xpending(self.keys.batches_stream, BATCHES_GROUP)
        return not pending["pending"]

    async def _reclaim_once(self) -> None:
        """Take over batch entries whose processor stopped renewing them (it died): all we
        have room for, in one pass over the pending list, so recovery takes the lease plus
        one scan however many batches the dead processor held. A batch holds at most
        BATCH_SIZE tasks, so claiming free // BATCH_SIZE entries never overfills us."""
        cursor = "0-0"
        while self.free > 0 and not self.stopping.is_set():
            cursor, entries, _deleted = await self.redis.xautoclaim(
                self.keys.batches_stream, BATCHES_GROUP, self.name,
                min_idle_time=self.settings.batching.lock_ttl_ms, start_id=cursor,
                count=max(1, self.free // self.settings.batching.batch_size))
            for entry_id, fields in entries:
                if fields:
                    log.warning("reclaimed_batch", batch_id=fields.get("b"), entry=entry_id)
                    metrics.reclaims.labels("batches").inc()
                    await self._start(entry_id, fields, fresh=False)
            if cursor == "0-0":
                return

    async def _start(self, entry_id: str, fields: dict[str, str], fresh: bool) -> None:
        """Own the entry at once: from here on only the batch task may let go of it, so a
        Redis error below can never leave an entry we keep renewing but never run."""
        ids = [t for t in fields.get("t", "").split(",") if t]
        self._set_inflight(len(ids))
        self.leases.entries.add(entry_id)
        assert self._tg is not None
        task = self._tg.create_task(self._run_batch(entry_id, fields, ids))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        if fresh:
            metrics.batches_taken.inc()
            metrics.batch_size.observe(len(ids))
        await self._safe_report(taken=len(ids) if fresh else 0)

    # --- running a batch ----------------------------------------------------------------------
    async def _run_batch(self, entry_id: str, fields: dict[str, str], ids: list[str]) -> None:
        batch_id, claimed_at = fields.get("b", entry_id), now_ms()
        entry = BatchEntry(entry_id, len(ids))
        outcomes = await asyncio.gather(*(self._run_task(t, batch_id, entry) for t in ids))
        handed = [t for t, o in zip(ids, outcomes, strict=True) if o is Outcome.HANDOFF]
        try:
            if handed:
                await until_redis_answers(lambda: self._handoff(entry_id, batch_id, handed),
                                          "handoff", batch_id=batch_id)
            elif all(o in FINISHED for o in outcomes) or await until_redis_answers(
                    lambda: self.steps.all_terminal(ids), "batch", batch_id=batch_id):
                if not entry.acked:  # else the last task's complete.lua did
                    await until_redis_answers(
                        lambda: self.redis.xack(self.keys.batches_stream, BATCHES_GROUP,
                                                entry_id), "ack", batch_id=batch_id)
                await self._save_batch(BatchRow(
                    id=batch_id, size=len(ids), reason=fields.get("r", "size"),
                    processor=self.name, created_at=int(fields.get("at") or now_ms()),
                    claimed_at=claimed_at, completed_at=now_ms()))
        finally:
            self.leases.entries.discard(entry_id)

    async def _save_batch(self, row: BatchRow) -> None:
        """The batch's row is a record, not a result: failing to write it fails nothing."""
        try:
            await self.store.save_batch(row)
        except Exception as exc:
            if store_broken(exc):
                raise
            log.warning("batch_row_not_saved", batch_id=row.id, error=repr(exc))

    async def _run_task(self, task_id: str, batch_id: str, entry: BatchEntry) -> Outcome:
        crashes = 0
        try:
            while True:
                cancel_if_asked()
                run = TaskRun(self.deps, task_id, batch_id, entry)
                self.runs[task_id] = run
                try:
                    outcome = await until_redis_answers(run.run, "task", task_id=task_id)
                except Exception as exc:
                    if store_broken(exc):
                        raise  # the store is unusable: this process cannot go on
                    crashes += 1
                    await self._crashed(run, exc, crashes)
                    if crashes > self.settings.max_attempts:
                        return Outcome.CRASHED
                    continue
                if outcome in (Outcome.DONE, Outcome.ADOPTED):
                    telemetry.finished(run.status)
                if outcome is not Outcome.BUSY or self.stopping.is_set():
                    if outcome in FINISHED:
                        entry.finished += 1
                    return Outcome.HANDOFF if outcome is Outcome.BUSY else outcome
                # Someone else holds it and is alive (it renews): look again in a while.
                await self._sleep(self.settings.batching.lock_ttl_ms / 3000)
        finally:
            self.runs.pop(task_id, None)
            self._set_inflight(-1)
            await self._safe_report()

    async def _crashed(self, run: TaskRun, exc: Exception, crashes: int) -> None:
        """An unexpected error in one task's run (a bug, a value the store refuses): it stays
        with that task. The task is run again at once; each run that reaches the provider
        counts an attempt in Redis, so a task that keeps crashing its holder ends ``failed``
        after MAX_ATTEMPTS (``attempts_exhausted``) like one whose holders died. A run that
        crashes before it counts an attempt (it never reaches the provider) is given up here
        after MAX_ATTEMPTS + 1 runs and left unacknowledged: reclaimed after a lease, it costs
        a log line per lease, never a provider call or a process."""
        log.error("task_crashed", task_id=run.task_id, crashes=crashes, error=repr(exc),
                  exc_info=exc)
        if run.lease is not None:
            try:
                await self.steps.release_lease(run.task_id, run.lease.token)
            except WAIT_OUT:
                pass  # it expires; the next run waits for it

    async def _safe_report(self, taken: int = 0) -> None:
        """Ask for a capacity report. Reports asked for while one is on its way go out
        together as the next one: under load, one round trip covers many finished tasks."""
        self._taken += taken
        self._report_due.set()

    async def _report_when_due(self) -> None:
        await self._report_due.wait()
        loop = asyncio.get_running_loop()
        wait = self._reported_at + REPORT_GAP_S - loop.time()
        if wait > 0 and not self.stopping.is_set():
            await asyncio.sleep(wait)
        self._report_due.clear()
        self._reported_at = loop.time()
        taken, self._taken = self._taken, 0
        try:
            await self._report_capacity(taken)
        except UNAVAILABLE:
            self._taken += taken  # counted on the next report (the heartbeat's at the latest)
            raise

    async def _handoff(self, entry_id: str, batch_id: str, ids: list[str]) -> None:
        n = await self.steps.handoff(entry_id=entry_id, batch_id=batch_id, now=now_ms(),
                                     task_ids=ids)
        log.info("handed_off", batch_id=batch_id, tasks=n)

    # --- cancellation -------------------------------------------------------------------------
    async def _listen_cancels(self) -> None:
        pubsub: PubSub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.cancel_channel)
        try:
            while not self.stopping.is_set():
                cancel_if_asked()
                message = await pubsub.get_message(timeout=self._poll_s)
                if message is not None:
                    run = self.runs.get(str(message["data"]))
                    if run is not None:
                        run.interrupt(Outcome.CANCEL)
        finally:
            await pubsub.aclose()


def make_http(settings: ProcessorSettings) -> routing.Router:
    """The process's provider clients: one per provider (PROVIDERS_FILE), each pooled."""
    return routing.Router(settings.routing, settings.provider, settings.limits,
                          settings.concurrency + 16)
