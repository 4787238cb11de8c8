"""The Responses API as processes, with the official ``openai`` SDK: what only processes show.
A background response survives ``kill -9`` of the processor running it; a stream resumes with
``starting_after`` on a second edge after the one it started on was killed; and
``previous_response_id`` works across two edges and after a restart of every service. On each
store (tests/e2e/conftest.py)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import redis

from harness.processes import RedisServer, Service, Stack, free_port, running_stack
from harness.waiting import wait_for
from services.edge.openai.responses import protocol
from services.mockai.text import content_tokens, digest_prompt
from shared.keys import Keys
from tests.e2e.conftest import rows

LEASE_MS = 2000
# Short leases and a quick reclaim, so a killed holder's task is taken over within seconds.
CRASH_ENV = {"LOCK_TTL_MS": str(LEASE_MS), "RECLAIM_INTERVAL_S": "0.3", "RETRY_BASE_S": "0.05",
             "RETRY_CAP_S": "0.5", "DRAIN_S": "1", "AI_IDLE_TIMEOUT_S": "1",
             "COORDINATOR_RECLAIM_IDLE_MS": "1000"}
RECOVERY_S = (LEASE_MS / 1000 + 0.3) * 3 + 20
QUIET = {"reasoning_tokens": 0, "content_tokens": 5}


def slow() -> dict[str, Any]:
    """An answer that takes about two seconds, tagged so its provider calls can be told."""
    return {"mock": {"tokens_per_s": 20, "content_tokens": 40, "reasoning_tokens": 0,
                     "tag": uuid.uuid4().hex[:12]}}


def answer(messages: list[dict[str, str]], tokens: int = 5) -> str:
    """What the mock answers to these messages: its text is a function of them."""
    return "".join(content_tokens(digest_prompt(messages).seed, tokens))


@contextmanager
def sdk(url: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    try:
        yield client
    finally:
        client.close()


def task_hash(stack: Stack, task_id: str) -> dict[str, str]:
    with redis.Redis.from_url(stack.redis_url, decode_responses=True) as r:
        return dict(r.hgetall(Keys(stack.prefix).task(task_id)))  # type: ignore[arg-type]


def started(client: openai.OpenAI, **create: Any) -> tuple[str, list[Any]]:
    """A background, streamed response, read until its first text: its id and the events
    read (the connection is then dropped)."""
    stream = client.responses.create(model="mock-r1", background=True, stream=True, **create)
    seen: list[Any] = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            break
    stream.close()
    return seen[0].response.id, seen


def resumed(client: openai.OpenAI, resp_id: str, after: int) -> list[Any]:
    return list(client.responses.retrieve(resp_id, stream=True, starting_after=after))


def assert_contiguous_to_the_end(first: list[Any], rest: list[Any], final: Any) -> None:
    numbers = [e.sequence_number for e in first + rest]
    assert numbers == list(range(len(numbers))), numbers
    assert rest[-1].type == "response.completed"
    text = "".join(e.delta for e in first + rest if e.type == "response.output_text.delta")
    assert text == final.output_text == rest[-1].response.output_text


def holder(stack: Stack, task_id: str) -> Service:
    """The processor process running the task (its PROCESSOR_NAME ends in its counter)."""
    def running() -> str | None:
        h = task_hash(stack, task_id)
        return h.get("processor") if h.get("status") == "running" else None
    name = str(wait_for(running, 30, "the response to run on a processor"))
    counter = name.rsplit("-", 1)[-1]
    return next(s for s in stack.services if s.name == f"processor-{counter}")


def second_edge(stack: Stack) -> str:
    port = free_port()
    stack.start("edge", EDGE_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/api/health").status_code == 200, 20, "a second edge")
    return url


def test_a_background_response_survives_kill_9_of_its_processor(
        tmp_path: Path, redis_url: str) -> None:
    with running_stack(tmp_path, redis_url, processors=2, env=CRASH_ENV) as stack, \
            sdk(stack.edge_url) as client:
        resp_id, first = started(client, input="Outlive a crash", metadata=slow())
        task_id = protocol.task_id_of(resp_id) or ""
        victim = holder(stack, task_id)
        victim.kill(signal.SIGKILL)
        rest = resumed(client, resp_id, first[-1].sequence_number)
        final = client.responses.retrieve(resp_id)
        assert final.status == "completed"
        assert_contiguous_to_the_end(first, rest, final)
        assert final.output_text == answer([{"role": "user", "content": "Outlive a crash"}],
                                           40)
        [(processor, status, attempts)] = rows(
            stack.store_path, "SELECT processor, status, attempts FROM tasks WHERE id = ?",
            task_id)
        assert status == "succeeded" and attempts == 2
        assert processor != victim.name and processor is not None
        assert victim.proc.returncode == -signal.SIGKILL


def test_a_stream_resumes_on_a_second_edge_after_its_edge_was_killed(
        tmp_path: Path, redis_url: str) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        other = second_edge(stack)
        with sdk(stack.edge_url) as first_client, sdk(other) as client:
            resp_id, first = started(first_client, input="Outlive an edge", metadata=slow())
            edge = stack.of("edge")[0]  # the stack's own, started first
            edge.kill(signal.SIGKILL)
            assert not edge.alive
            rest = resumed(client, resp_id, first[-1].sequence_number)
            final = client.responses.retrieve(resp_id)
            assert final.status == "completed"
            assert_contiguous_to_the_end(first, rest, final)


def test_previous_response_id_across_two_edges_and_after_every_service_restarted(
        tmp_path: Path) -> None:
    """Redis too restarts, without its data (no persistence): the earlier turns come from the
    store alone."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        turns_across_restarts(tmp_path, server)
    finally:
        server.stop()


def turns_across_restarts(tmp_path: Path, server: RedisServer) -> None:
    with running_stack(tmp_path, server.url) as stack:
        other = second_edge(stack)
        with sdk(stack.edge_url) as one, sdk(other) as two:
            first = one.responses.create(model="mock-r1", input="What is 2+2?",
                                         metadata={"mock": QUIET})
            second = two.responses.create(model="mock-r1", input="And times 3?",
                                          previous_response_id=first.id,
                                          metadata={"mock": QUIET})
        turns = [{"role": "user", "content": "What is 2+2?"},
                 {"role": "assistant", "content": first.output_text},
                 {"role": "user", "content": "And times 3?"}]
        assert second.output_text == answer(turns)
        stack.down()
        assert not any(s.alive for s in stack.services)
        server.stop()
        server.start()
        with redis.Redis.from_url(server.url) as r:
            assert r.dbsize() == 0, "Redis came back empty"
        stack.up()
        with sdk(stack.edge_url) as client:
            third = client.responses.create(model="mock-r1", input="Why?",
                                            previous_response_id=second.id,
                                            metadata={"mock": QUIET})
            assert client.responses.retrieve(first.id).output_text == first.output_text
        assert third.output_text == answer(
            [*turns, {"role": "assistant", "content": second.output_text},
             {"role": "user", "content": "Why?"}])
