"""Scenario: provider-limited over two providers. PROVIDERS_FILE routes the model to two mock
providers, each allowing 4 calls in flight (a 429 with Retry-After: 1 past that); 400 tasks of
0.5 s each, two processors at the default concurrency (32 each); work spills over to the
second provider when the first is full. Twice: the governor learning each provider's limit
(no max_concurrency in the file), and the file declaring it. Tasks/s against the combined
limit-bound ideal (4 + 4 calls / 0.5 s = 16 tasks/s), the share of provider calls answered
429 (on both), and tasks failed."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import httpx

from bench.common import Ctx, fmt_rate, loadgen, query, wait_rows
from bench.procs import BENCH_ENV, Stack, free_port, redis_server, wait_for
from harness.providers import two_providers_file

LIMIT = 4  # calls in flight, each provider
TASK_S = 0.5
IDEAL = 2 * LIMIT / TASK_S


async def _calls(url: str) -> list[dict[str, Any]]:
    got = await asyncio.to_thread(httpx.get, f"{url}/mock/requests", timeout=30)
    return list(got.json()["requests"])


async def one(ctx: Ctx, n: int, declared: bool) -> dict[str, Any]:
    how = "declared" if declared else "learned"
    d = ctx.dir(f"provider-limited-two-{how}")
    env = {**BENCH_ENV, "MOCKAI_MAX_CONCURRENCY": str(LIMIT),
           "MOCKAI_TTFT_MS": str(int(TASK_S * 1000)), "MOCKAI_TOKENS_PER_S": "0",
           "MOCKAI_CONTENT_TOKENS": "20", "MOCKAI_REASONING_TOKENS": "0"}
    with redis_server(d) as r:
        s = Stack(d, r.url, env)
        b_url = f"http://127.0.0.1:{free_port()}"
        s.env_overrides["PROVIDERS_FILE"] = str(two_providers_file(
            d, f"{s.mock_url}/v1", f"{b_url}/v1", max_concurrency=LIMIT if declared else 0))
        try:
            s.start("mockai", MOCKAI_PORT=b_url.rsplit(":", 1)[1])
            wait_for(lambda: httpx.get(f"{b_url}/health").status_code == 200, 20,
                     "the second mock provider")
            s.up(processors=2)
            await loadgen(s.edge_url + "/api/tasks", n)
            await wait_rows(s.store_path, n, 60 + n * TASK_S, "provider-limited-two")
            rows = query(s.store_path,
                         "SELECT status, created_at, completed_at, provider FROM tasks")
            calls = {"a": await _calls(s.mock_url), "b": await _calls(b_url)}
        except BaseException:
            print(s.logs(), file=sys.stderr)
            raise
        finally:
            for svc in s.services:
                svc.kill(signal.SIGKILL)
    ok = [row for row in rows if row[0] == "succeeded"]
    span = (max(row[2] for row in rows) - min(row[1] for row in rows)) / 1000
    rate = len(ok) / span if span > 0 else 0.0
    every = calls["a"] + calls["b"]
    refused = sum(1 for c in every if c["status"] == 429)
    share = refused / len(every) if every else 0.0
    failed = len(rows) - len(ok)
    by = {p: sum(1 for row in ok if row[3] == p) for p in ("a", "b")}
    ratio = rate / IDEAL
    ctx.row("provider-limited-two",
            f"2 providers x {LIMIT} ({how}): tasks/s (of ideal {IDEAL:g}/s) | 429s | failed "
            f"(N={n})",
            f"{fmt_rate(rate)} ({ratio:.2f}) | {share:.1%} ({refused} of {len(every)} calls) "
            f"| {failed}", ">= 0.90 of ideal, <= 5% 429, 0 failed",
            ratio >= 0.9 and share <= 0.05 and failed == 0)
    return {"how": how, "limit_each": LIMIT, "task_s": TASK_S, "ideal_tasks_per_s": IDEAL,
            "tasks": n,
            "succeeded": len(ok), "failed": failed, "seconds": round(span, 2),
            "tasks_per_s": round(rate, 2), "of_ideal": round(ratio, 3),
            "calls": {p: len(c) for p, c in calls.items()}, "refused_429": refused,
            "share_429": round(share, 4), "answered_by": by}


async def run(ctx: Ctx) -> dict[str, Any]:
    n = 120 if ctx.quick else 400
    runs = [await one(ctx, n, declared=False), await one(ctx, n, declared=True)]
    ctx.notes.append(f"provider-limited-two: PROVIDERS_FILE with two mocks, each allowing "
                     f"{LIMIT} calls in flight (429, Retry-After: 1 past that); tasks take "
                     f"{TASK_S} s; 2 processors at PROCESSOR_CONCURRENCY 32; 'learned': the "
                     "governor learns each limit from its 429s (each window starts at "
                     "GOVERNOR_INITIAL_WINDOW, 8, so the first overshoot is 2 x 4 refusals); "
                     f"'declared': the file's "
                     f"max_concurrency = {LIMIT}; answered by a / b: "
                     + ", ".join(f"{x['how']} {x['answered_by']['a']} / {x['answered_by']['b']}"
                                 for x in runs))
    return {"runs": runs}
