"""Is the store the one this deployment runs on, and is it sound?

**Identity.** The store and Redis each hold the deployment's id (the store's ``meta`` table,
the Redis key ``{prefix}:deployment``). A service checks them before it starts:

- both empty: a new deployment; an id is made and written to both (the store first, so that
  services starting together agree on the store's);
- the store has one and Redis none: Redis lost its data (no AOF) or is new: Redis adopts the
  store's id, since the store holds what was finished;
- Redis has one and the store none, or they differ: the store file was deleted or replaced.
  The service refuses to start, rather than run an empty database beside a live deployment
  (finished tasks would answer 404, and new rows would be split across two files).

**Health.** :class:`StoreCheck` says what is wrong with the store, for ``/api/health``: the
file at ``STORE_PATH`` is no longer the one opened (deleted or replaced: the store refuses
every write until it is back, see ``SqliteStore.moved``), it takes no writes (full disk,
read-only), or it is corrupt (``PRAGMA quick_check`` on a fresh connection, which does not
trust cached pages). The write
and the check run at most once per interval; the file's identity is looked at every time.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time

from shared import logs
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.runtime import Refusal
from shared.store import Store, StoreUnavailable, store_broken
from shared.timeutil import now_ms

log = logs.get("sluice.store")
DEPLOYMENT = "deployment"


class StoreRefused(Refusal):
    """The store is not this deployment's: the one-line reason a service will not start."""


async def check_identity(store: Store, redis: RedisClient, keys: Keys) -> str:
    """The deployment id the store and Redis agree on, after making or adopting it; raises
    :class:`StoreRefused` when the store is not the deployment's (see the module's doc)."""
    in_store = await store.get_meta(DEPLOYMENT)
    in_redis: str | None = await redis.get(keys.deployment)  # type: ignore[assignment]
    if in_store is None and in_redis is not None:
        raise StoreRefused(
            f"the store at {_where(store)} has no deployment id, but Redis belongs to deployment "
            f"{in_redis}: the store file was deleted or replaced. Restore it, or point "
            "STORE_PATH at this deployment's store; refusing to start on an empty database")
    if in_store is None:
        await store.put_meta(DEPLOYMENT, "dep_" + secrets.token_hex(8), replace=False)
        in_store = await store.get_meta(DEPLOYMENT)
        assert in_store is not None
        log.info("deployment_created", deployment=in_store)
    if in_redis is None:
        await redis.set(keys.deployment, in_store, nx=True)
        in_redis = await redis.get(keys.deployment)  # type: ignore[assignment]
        if in_redis == in_store:
            log.warning("deployment_id_adopted_by_redis", deployment=in_store)
    if in_redis != in_store:
        raise StoreRefused(
            f"the store at {_where(store)} belongs to deployment {in_store}, but Redis (prefix "
            f"{keys.prefix}) to deployment {in_redis}: refusing to mix two deployments")
    return in_store


def _where(store: Store) -> str:
    return str(getattr(store, "path", None) or "STORE_URL")


def _quick_check(path: str) -> str | None:
    """None when sound, else what is wrong. A connection of its own: a long-lived one keeps
    pages in its cache and would not see the file change beneath it."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("PRAGMA quick_check(1)").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"corrupt: {exc}"
    verdict = str(rows[0][0]) if rows else "no answer"
    return None if verdict == "ok" else f"corrupt: {verdict}"


class StoreCheck:
    """What is wrong with the store, or None; the costly parts at most once per interval."""

    def __init__(self, store: Store, interval_s: float) -> None:
        self.store, self.interval_s = store, interval_s
        # A SQLite file can be deleted or replaced beneath us; a networked store cannot.
        self.path: str | None = getattr(store, "path", None)
        self._checked_at = -float("inf")
        self._verdict: str | None = None
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        if self.path is not None:
            moved = self.store.moved()  # the check every write of the store makes first
            if moved is not None:
                return f"{moved} (no write goes to it until it is back)"
        else:
            try:
                await self.store.ping()  # a networked store: is it reachable right now?
            except Exception as exc:
                return f"unreachable: {type(exc).__name__}: {exc}"
        async with self._lock:  # one check at a time; waiting callers get its verdict
            if time.monotonic() - self._checked_at >= self.interval_s:
                self._verdict = await self._deep_check()
                self._checked_at = time.monotonic()
            return self._verdict

    async def _deep_check(self) -> str | None:
        try:
            await self.store.put_meta("health_probe", str(now_ms()))
        except (sqlite3.Error, StoreUnavailable) as exc:
            return f"{'corrupt' if store_broken(exc) else 'not writable'}: {exc}"
        if self.path is None:
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _quick_check, self.path)
