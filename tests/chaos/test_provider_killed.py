"""Chaos: two providers serve the model (PROVIDERS_FILE), each a mock provider process; the
first, which takes the work while it has room, is killed with SIGKILL while it streams answers.
Its tasks finish on the second: every task succeeds, each with one row in the store, and the
tasks it was answering say so call by call."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import orjson

from harness.processes import Stack, free_port
from harness.providers import two_providers_file
from harness.waiting import wait_for
from tests.chaos.conftest import CHAOS_ENV, events, final_text, slow, tag_of
from tests.e2e.conftest import rows

TASKS = 24


def streaming_tags(url: str) -> set[str]:
    """The tags of the calls a mock is answering now."""
    got = httpx.get(f"{url}/mock/requests").json()["requests"]
    return {r["tag"] for r in got if r.get("outcome") == "in_progress" and r.get("tag")}


def test_a_provider_killed_mid_run_leaves_its_tasks_to_the_other(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    b_port = free_port()
    stack = Stack(tmp_path, redis_url, dict(CHAOS_ENV))
    stack.env_overrides["PROVIDERS_FILE"] = str(two_providers_file(
        tmp_path, f"{stack.mock_url}/v1", f"http://127.0.0.1:{b_port}/v1"))
    try:
        provider_b = stack.start("mockai", MOCKAI_PORT=str(b_port))
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{b_port}/health").status_code == 200, 20,
                 "the second mock provider")
        stack.up(processors=2)
        [provider_a] = [s for s in stack.of("mockai") if s is not provider_b]
        api = api_factory(stack.edge_url)
        bodies = [slow(tokens_per_s=20, content_tokens=40) for _ in range(TASKS)]
        ids = [api.submit(body) for body in bodies]
        # Several answers on their way from the first provider: kill it then.
        cut = wait_for(lambda: len(t := streaming_tags(stack.mock_url)) >= 4 and t, 30,
                       "answers streaming from the first provider")
        provider_a.kill(signal.SIGKILL)
        done = [api.wait_terminal(i, 90) for i in ids]
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()
    assert [t["status"] for t in done] == ["succeeded"] * TASKS, [t.get("error") for t in done]
    by_tag = {tag_of(body): task for body, task in zip(bodies, done, strict=True)}
    for tag in cut:
        task = by_tag[tag]
        # The call the kill cut short, then the other provider's answer, at once (no backoff
        # meant for the same provider: the next route).
        assert task["result"]["provider"] == "b", task["tries"]
        first, last = task["tries"][0], task["tries"][-1]
        assert (first["provider"], first["status"]) == ("a", "failed"), task["tries"]
        assert (last["provider"], last["status"]) == ("b", "succeeded"), task["tries"]
    # One row each, the answer the client's events say; nothing lost, nothing twice.
    stored = rows(stack.store_path,
                  "SELECT id, status, content, provider, tries FROM tasks")
    assert sorted(r[0] for r in stored) == sorted(ids)
    for task_id, status, content, provider, tries in stored:
        task = next(t for t in done if t["id"] == task_id)
        assert status == "succeeded" and provider == task["result"]["provider"]
        assert content == task["result"]["content"] == final_text(events(stack, task_id))
        assert orjson.loads(tries) == task["tries"]
