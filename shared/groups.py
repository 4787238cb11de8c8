"""Consumer groups and stream housekeeping shared by the coordinator and the processor."""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError, ResponseError

from shared.redis_conn import RedisClient


async def ensure_group(redis: RedisClient, stream: str, group: str) -> None:
    """Create the group reading from the very start, so entries added before it existed
    (a task submitted before any coordinator started) are delivered too."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except OutOfMemoryError:
        # XGROUP CREATE is refused over maxmemory even when the group exists: a service that
        # (re)starts while Redis is full only needs to know that it does.
        if not await has_group(redis, stream, group):
            raise
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def has_group(redis: RedisClient, stream: str, group: str) -> bool:
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return False  # no such stream
    return any(g["name"] == group for g in groups)


async def trim_consumed(redis: RedisClient, stream: str, group: str) -> None:
    """Drop entries every consumer has acknowledged: those older than both the oldest pending
    entry and the group's last delivered one. Never drops an unread or unacknowledged entry."""
    groups = await redis.xinfo_groups(stream)
    info = next((g for g in groups if g["name"] == group), None)
    if info is None:
        return
    floor = str(info["last-delivered-id"])
    if floor == "0-0":
        return
    pending = await redis.xpending(stream, group)
    if pending and pending.get("pending"):
        oldest = str(pending["min"])
        floor = min(floor, oldest, key=_id_key)
    await redis.xtrim(stream, minid=floor, approximate=True)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
