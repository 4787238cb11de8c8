"""What processors learn about the provider, kept in Redis for ``/api/ai-status``."""

from __future__ import annotations

from shared import logs
from shared.keys import Keys
from shared.redis_conn import WAIT_OUT, RedisClient, wait_event
from shared.timeutil import now_ms

log = logs.get("sluice.processor")


class ProviderStatus:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis, self.key = redis, keys.ai_status
        self._noted: tuple[bool, int] | None = None

    async def note(self, *, streamed: bool | None = None, error: str | None = None,
                   tenant: str = "") -> None:
        """Note a success (``streamed``: did the provider stream) or a provider ``error``. An
        error is kept per tenant: its message may quote the request of the task that caused
        it, so only that task's tenant is shown it."""
        now = now_ms()
        fields: dict[str | bytes, str | int] = {}
        if streamed is not None:
            # Once a second is enough for "last success"; a change of streaming goes at once.
            last = self._noted
            if last is not None and last[0] == streamed and now - last[1] < 1000:
                return
            self._noted = (streamed, now)
            fields = {"streaming": "1" if streamed else "0", "streaming_at": now,
                      "success_at": now}
        if error is not None:
            fields = {f"error:{tenant}": error[:300], f"error_at:{tenant}": now}
        if fields:
            try:
                await self.redis.hset(self.key, mapping=fields)  # type: ignore[arg-type]
            except WAIT_OUT as exc:
                # A note, not a step of the task: a task must not stop (and be run again) for it.
                log.warning(wait_event(exc), loop="provider_status", error=type(exc).__name__)
