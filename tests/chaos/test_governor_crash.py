"""Chaos: kill -9 a processor while it holds governor slots. Its slots are leases: they come
back within the lease time, and every task still finishes."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import redis

from harness.processes import running_stack
from harness.waiting import wait_for
from shared.keys import Keys
from tests.chaos.conftest import CHAOS_ENV, LEASE_MS, RECOVERY_LIMIT_S, service_named, slow


def test_kill_9_a_processor_holding_governor_slots(tmp_path: Path, redis_url: str,
                                                    api_factory: Any) -> None:
    env = {**CHAOS_ENV, "PROVIDER_MAX_CONCURRENCY": "4", "GOVERNOR_INITIAL_WINDOW": "4"}
    with running_stack(tmp_path, redis_url, processors=2, env=env) as stack:
        api = api_factory(stack.edge_url)
        ids = [api.submit(slow(tokens_per_s=20, content_tokens=30)) for _ in range(12)]
        r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        keys = Keys(stack.prefix)
        [provider] = wait_for(lambda: r.hkeys(keys.governors), 10, "the provider's governor")
        slots_key = keys.governor_slots(provider)

        def holders() -> dict[str, int]:
            """Processor name -> slots it holds that have not expired."""
            now = int(time.time() * 1000)
            out: dict[str, int] = {}
            for member in r.zrangebyscore(slots_key, now, "+inf"):
                name = member.split(":")[1]
                out[name] = out.get(name, 0) + 1
            return out

        victim = wait_for(lambda: next(iter(holders()), None), 20, "a processor holding slots")
        held = holders()[victim]
        service_named(stack, victim).kill(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: victim not in holders(), LEASE_MS / 1000 + 2,
                 "the dead processor's slots to expire")
        freed_after = time.monotonic() - killed_at
        print(f"chaos governor: {held} slots of a killed processor came back after "
              f"{freed_after:.2f}s (lease {LEASE_MS} ms)")
        assert freed_after <= LEASE_MS / 1000 + 1
        done = [api.wait_terminal(t, RECOVERY_LIMIT_S + 60) for t in ids]
        assert [t["status"] for t in done] == ["succeeded"] * len(ids)
        # Nothing leaked: once all is done, no slot is held.
        wait_for(lambda: r.zcount(slots_key, int(time.time() * 1000), "+inf") == 0, 5,
                 "every slot to be released")
        r.close()
