"""The OpenAI Batch API with the official ``openai`` SDK, unchanged: files, batches, bad input
files, failed requests, cancel and expiry, against the real edge, coordinator, processor,
Redis, store and mock provider. The cases that query the store in ways of their own run on
each store; the others (first_store_only) on the first."""

from __future__ import annotations

from pathlib import Path

import openai
import orjson
import pytest

from harness.waiting import until
from services.edge.openai.batch.runner import BATCH_LINE_PRIORITY
from tests.integration.batch_kit import KEY_A, BatchRig, batch_rig, line, mock_text
from tests.integration.kit import Core


@pytest.fixture
async def rig(core: Core, tmp_path: Path) -> BatchRig:  # type: ignore[misc]
    async with batch_rig(core, tmp_path) as r:
        yield r


async def test_the_sdk_runs_a_batch_and_gets_every_answer_once(rig: BatchRig) -> None:
    prompts = {f"req-{n}": f"question number {n}" for n in range(12)}
    batch = await rig.run([line(cid, p) for cid, p in prompts.items()],
                          metadata={"job": "nightly"})
    assert batch.status == "validating" and batch.object == "batch"
    assert batch.metadata == {"job": "nightly"}
    done = await rig.wait(batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (12, 12, 0)
    assert done.error_file_id is None and done.errors is None
    stamps = [done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at]
    assert None not in stamps and stamps == sorted(stamps)
    assert done.expires_at == done.created_at + 86_400
    out = await rig.jsonl(done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(prompts), "each custom_id once"
    for o in out:
        response = o["response"]
        assert o["error"] is None and response["status_code"] == 200
        assert o["id"].startswith("batch_req_")
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == "mock-r1"
        assert body["choices"][0]["message"]["content"] == mock_text(prompts[o["custom_id"]])
        assert body["choices"][0]["finish_reason"] == "stop"
        task = await rig.core.store.get_task(response["request_id"])
        assert task is not None and task["tenant"] == "alpha"
        # Each line waited at the batch priority, behind the tenant's interactive tasks.
        assert await rig.core.redis.hget(rig.core.keys.task(task["id"]), "priority") == str(
            BATCH_LINE_PRIORITY)
    assert done.usage is not None
    assert done.usage.output_tokens == 12 * 5
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert len(await rig.core.mock_requests()) == 12, "each line sent once"
    output_file = await rig.client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    assert output_file.bytes == len((await rig.client.files.content(output_file.id)).content)


async def test_files_and_batches_belong_to_their_tenant_and_list_in_pages(
        rig: BatchRig) -> None:
    first = await rig.run([line("a", "one")])
    second = await rig.run([line("a", "two")])
    page = await rig.client.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    after = await rig.client.batches.list(limit=1, after=second.id)
    assert [b.id for b in after.data] == [first.id]
    every = [b.id async for b in rig.client.batches.list(limit=1)]
    assert every == [second.id, first.id], "the SDK's auto-pagination follows `after`"
    assert [b.id for b in (await rig.other.batches.list()).data] == []
    with pytest.raises(openai.NotFoundError):
        await rig.other.batches.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await rig.other.files.content(first.input_file_id)
    with pytest.raises(openai.NotFoundError):
        await rig.other.batches.create(input_file_id=first.input_file_id,
                                       endpoint="/v1/chat/completions",
                                       completion_window="24h")
    files = [f.id for f in (await rig.client.files.list()).data]
    assert first.input_file_id in files and second.input_file_id in files
    deleted = await rig.client.files.delete(second.input_file_id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await rig.client.files.retrieve(second.input_file_id)


@pytest.mark.first_store_only
async def test_each_kind_of_bad_line_fails_the_batch_with_openais_errors(
        rig: BatchRig) -> None:
    lines = [
        line("ok-1", "fine"),
        b'{"custom_id": "broken", "method": "POST", "url": ',
        line("wrong-url", "x", url="/v1/embeddings"),
        line("ok-1", "again"),
        orjson.dumps({"custom_id": "bad-body", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "mock-r1",
                               "messages": [{"role": "wizard", "content": "hi"}]}}),
        orjson.dumps({"custom_id": "bad-temp", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": "hi"}],
                               "temperature": 7}}),
    ]
    batch = await rig.run(lines)
    failed = await rig.wait(batch.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.in_progress_at is None and failed.output_file_id is None
    assert failed.errors is not None and failed.errors.data is not None
    got = [(e.code, e.line, e.param) for e in failed.errors.data]
    assert got == [("invalid_json_line", 2, None), ("url_mismatch", 3, "url"),
                   ("duplicate_custom_id", 4, "custom_id"),
                   ("invalid_request", 5, "body.messages[0].role"),
                   ("invalid_request", 6, "body.temperature")]
    assert all(e.message for e in failed.errors.data)
    assert failed.request_counts is not None and failed.request_counts.total == 0
    assert await rig.core.mock_requests() == [], "no line of a bad file is sent"
    empty = await rig.wait((await rig.run(b"\n")).id)
    assert empty.errors is not None and empty.errors.data is not None
    assert [e.code for e in empty.errors.data] == ["empty_file"]


@pytest.mark.first_store_only
async def test_refused_creates_and_uploads_get_openai_errors(rig: BatchRig) -> None:
    file_id = await rig.upload([line("a", "x")])
    for bad in ({"endpoint": "/v1/embeddings"}, {"completion_window": "48h"},
                {"metadata": {"k": 1}}):
        args = {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h", **bad}
        with pytest.raises(openai.BadRequestError):
            await rig.client.batches.create(**args)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        await rig.client.batches.create(input_file_id="file-nope",
                                        endpoint="/v1/chat/completions",
                                        completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        await rig.client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    auth = {"Authorization": f"Bearer {KEY_A}"}
    for ctype, body in (("multipart/form-data", b""),
                        ("multipart/form-data; boundary=b0", b"--b0\r\nNone--b0"),
                        ("application/json", b"{}")):
        r = await rig.edge.client.post("/v1/files", data=body,
                                       headers={**auth, "Content-Type": ctype})
        assert r.status in (400, 415), (ctype, r.status, await r.text())


@pytest.mark.first_store_only
async def test_failed_requests_go_to_the_error_file(rig: BatchRig) -> None:
    lines = [line(f"ok-{n}", f"fine {n}") for n in range(3)]
    lines.append(line("refused", "no", fault={"status": 400, "message": "mock says no"}))
    done = await rig.wait((await rig.run(lines)).id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    out, errors = await rig.jsonl(done.output_file_id), await rig.jsonl(done.error_file_id)
    assert sorted(o["custom_id"] for o in out) == ["ok-0", "ok-1", "ok-2"]
    [err] = errors
    assert err["custom_id"] == "refused" and err["error"] is None
    assert err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["message"] == "mock says no"


async def test_cancel_mid_run_keeps_the_finished_lines(core: Core, tmp_path: Path) -> None:
    async with batch_rig(core, tmp_path, concurrency=2, BATCH_LINES_IN_FLIGHT="2") as rig:
        lines = [line(f"r{n}", f"slow {n}", tokens=6, tokens_per_s=30) for n in range(30)]
        batch = await rig.run(lines)

        async def some_done() -> bool:
            b = await rig.client.batches.retrieve(batch.id)
            return b.request_counts is not None and b.request_counts.completed >= 2
        await until(some_done, 30, "two of the batch's requests to complete")
        cancelling = await rig.client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        done = await rig.wait(batch.id)
        assert done.status == "cancelled" and done.cancelled_at is not None
        out, errors = await rig.jsonl(done.output_file_id), await rig.jsonl(done.error_file_id)
        ids = [o["custom_id"] for o in out + errors]
        assert sorted(ids) == sorted(f"r{n}" for n in range(30)), "every line exactly once"
        assert len(out) >= 2
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        assert len(await rig.core.mock_requests()) < 30, "unsent lines were never sent"
        with pytest.raises(openai.ConflictError):
            await rig.client.batches.cancel(
                (await rig.wait((await rig.run([line("x", "y")])).id)).id)


@pytest.mark.first_store_only
async def test_a_batch_past_its_window_expires_with_its_finished_lines(
        core: Core, tmp_path: Path) -> None:
    async with batch_rig(core, tmp_path, concurrency=1, BATCH_LINES_IN_FLIGHT="1",
                         BATCH_COMPLETION_WINDOW_S="2") as rig:
        lines = [line(f"r{n}", f"slow {n}", tokens=6, tokens_per_s=30) for n in range(40)]
        done = await rig.wait((await rig.run(lines)).id)
        assert done.status == "expired" and done.expired_at is not None
        assert done.expires_at == done.created_at + 2
        out, errors = await rig.jsonl(done.output_file_id), await rig.jsonl(done.error_file_id)
        assert out, "a line of 0.2 s finishes within the window (1 s at least: whole seconds)"
        assert sorted(o["custom_id"] for o in out + errors) == sorted(
            f"r{n}" for n in range(40))
        for o in out:
            prompt = f"slow {o['custom_id'][1:]}"
            assert o["response"]["body"]["choices"][0]["message"]["content"] == mock_text(
                prompt, 6)
        unsent = [e for e in errors if e["error"]["code"] == "batch_expired"]
        assert unsent and len(await rig.core.mock_requests()) < 40


async def test_upload_limits_are_the_settings(core: Core, tmp_path: Path) -> None:
    async with batch_rig(core, tmp_path, BATCH_MAX_FILE_BYTES=str(3 << 20),
                         BATCH_MAX_FILE_LINES="3") as rig:
        big = line("a", "x" * (2 << 20))  # larger than MAX_BODY_BYTES: files are streamed
        f = await rig.client.files.create(file=("big.jsonl", big), purpose="batch")
        assert f.bytes == len(big)
        assert (await rig.client.files.content(f.id)).content == big
        with pytest.raises(openai.APIStatusError) as too_big:
            await rig.client.files.create(file=("huge.jsonl", b"x" * (3 << 20) + b"y"),
                                          purpose="batch")
        assert too_big.value.status_code == 413
        with pytest.raises(openai.BadRequestError) as too_long:
            await rig.upload([line(f"l{n}", "x") for n in range(4)])
        assert too_long.value.code == "too_many_lines"
        assert [x.id for x in (await rig.client.files.list()).data] == [f.id]
