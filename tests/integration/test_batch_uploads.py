"""Uploads to ``/v1/files`` are streamed to the store (issue 25, finding 5): the edge holds about
one store part per upload, not the file; at most BATCH_UPLOADS_PER_TENANT and
BATCH_UPLOADS_PER_EDGE run at once (429 beyond); a refused or abandoned upload leaves nothing.

The client here streams its multipart body from a generator that yields one chunk object again
and again, so what the process allocates while the uploads run is the edge's (and the store
driver's) doing, which tracemalloc sees."""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.waiting import until
from services.edge.openai.batch.store import BatchStore, FileMeta
from tests.integration.batch_kit import KEY_A, KEY_B, line
from tests.integration.edge_client import EdgeUnderTest, running_edge
from tests.integration.kit import Core

BOUNDARY = "sluice-upload-test-boundary"
LINE = line("c", "x" * 950) + b"\n"           # about 1 KiB
CHUNK = LINE * (65_536 // len(LINE))          # about 64 KiB of whole lines
MIB = 1 << 20


def form_head(purpose: str = "batch") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f'{purpose}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n').encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


async def form(chunks: int, stall_after: int | None = None, stalled: asyncio.Event | None = None,
               go: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """A multipart body with a file of ``chunks`` CHUNKs; it stops after ``stall_after`` of
    them (setting ``stalled``) until ``go`` is set."""
    yield form_head()
    for n in range(chunks):
        if n == stall_after and stalled is not None and go is not None:
            stalled.set()
            await go.wait()
        yield CHUNK
    yield FORM_TAIL


async def post_file(edge: EdgeUnderTest, key: str, body: Any) -> tuple[int, dict[str, Any],
                                                                     dict[str, str]]:
    r = await edge.client.post("/v1/files", data=body, headers={
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    return r.status, await r.json(), dict(r.headers)


def edge_env(core: Core, **extra: str) -> dict[str, str]:
    return {"REDIS_PREFIX": core.keys.prefix, "STORE_URL": core.store.url, "BATCH_API": "1",
            "EDGE_API_KEYS": f"{KEY_A}:alpha,{KEY_B}:beta", **extra}


async def leftovers(core: Core) -> tuple[int, int]:
    """Rows of files and of parts that belong to no file."""
    [files] = await core.store.fetch("SELECT COUNT(*) AS n FROM files")
    [orphans] = await core.store.fetch(
        "SELECT COUNT(*) AS n FROM file_parts WHERE file_id NOT IN (SELECT id FROM files)")
    return int(files["n"]), int(orphans["n"])


async def test_parallel_uploads_hold_a_part_each_not_the_file(
        core: Core, tmp_path: Path) -> None:
    parallel, chunks = 4, 512  # 4 files of 32 MiB at once
    async with running_edge(core.redis_url, tmp_path, **edge_env(core)) as edge:
        await post_file(edge, KEY_A, form(1))  # first use: imports, pools, statements
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            answers = await asyncio.gather(*(post_file(edge, KEY_A, form(chunks))
                                             for _ in range(parallel)))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        size = len(CHUNK) * chunks
        growth = peak - before
        print(f"\n{parallel} parallel uploads of {size / MIB:.0f} MiB: the process's "
              f"allocations peaked {growth / MIB:.1f} MiB above where they started")
        for status, body, _headers in answers:
            assert status == 200, body
            assert body["bytes"] == size and body["purpose"] == "batch"
        assert growth < parallel * 8 * MIB, f"{growth / MIB:.0f} MiB for {parallel} uploads"
        # What was stored is the file, byte for byte, and it is read back a part at a time.
        digest = hashlib.sha256()
        r = await edge.client.get(f"/v1/files/{answers[0][1]['id']}/content",
                                  headers={"Authorization": f"Bearer {KEY_A}"})
        async for piece in r.content.iter_chunked(1 << 16):
            digest.update(piece)
        assert digest.hexdigest() == hashlib.sha256(CHUNK * chunks).hexdigest()
        [row] = await core.store.fetch("SELECT lines FROM files WHERE id = ?",
                                       answers[0][1]["id"])
        assert int(row["lines"]) == (CHUNK * chunks).count(b"\n")


@pytest.mark.first_store_only
async def test_uploads_past_the_tenant_and_edge_caps_get_429(
        core: Core, tmp_path: Path) -> None:
    env = edge_env(core, BATCH_UPLOADS_PER_TENANT="2", BATCH_UPLOADS_PER_EDGE="3")
    async with running_edge(core.redis_url, tmp_path, **env) as edge:
        go = asyncio.Event()
        stalls = [asyncio.Event() for _ in range(3)]
        # Each sends 16 MiB, more than the sockets' buffers hold, so when a generator stalls,
        # the edge has been reading its upload for a while.
        slow = [asyncio.create_task(post_file(edge, key, form(300, 256, stall, go)))
                for key, stall in zip((KEY_A, KEY_A, KEY_B), stalls, strict=True)]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(s.wait() for s in stalls))
            status, body, headers = await post_file(edge, KEY_A, form(1))
            assert status == 429, body
            assert body["error"]["code"] == "too_many_uploads"
            assert "this key" in body["error"]["message"]
            assert headers["Retry-After"] == "1"
            status, body, _ = await post_file(edge, KEY_B, form(1))
            assert status == 429, body
            assert body["error"]["code"] == "too_many_uploads"
            assert "this server" in body["error"]["message"]
        finally:
            go.set()
        for status, body, _ in await asyncio.gather(*slow):
            assert status == 200, body
        status, body, _ = await post_file(edge, KEY_A, form(1))
        assert status == 200, "the slots were given back"
        assert await leftovers(core) == (4, 0), "a refused upload stores nothing"


async def test_refused_and_abandoned_uploads_leave_nothing(core: Core, tmp_path: Path) -> None:
    env = edge_env(core, BATCH_MAX_FILE_BYTES=str(3 * MIB), BATCH_MAX_FILE_LINES="3000")
    async with running_edge(core.redis_url, tmp_path, **env) as edge:
        status, body, _ = await post_file(edge, KEY_A, form(64))  # 4 MiB: past the size
        assert (status, body["error"]["code"]) == (413, "file_too_large")
        status, body, _ = await post_file(edge, KEY_A, b"".join([
            form_head(), b"{}\n" * 3001, FORM_TAIL]))
        assert (status, body["error"]["code"]) == (400, "too_many_lines")
        assert await leftovers(core) == (0, 0)
        # A client that leaves mid-upload, once two parts of its file are stored.
        go, stalled = asyncio.Event(), asyncio.Event()
        leaving = asyncio.create_task(post_file(edge, KEY_A, form(40, 32, stalled, go)))
        await asyncio.wait_for(stalled.wait(), 30)

        async def parts_stored() -> bool:
            [row] = await core.store.fetch("SELECT COUNT(*) AS n FROM file_parts")
            return int(row["n"]) >= 1
        await until(parts_stored, 30, "parts stored")
        leaving.cancel()
        with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
            await leaving

        async def cleaned() -> bool:
            return await leftovers(core) == (0, 0) and not await parts_stored()
        await until(cleaned, 30, "cleaned")


async def test_an_upload_whose_edge_died_is_swept_once_older_than_any_upload(
        core: Core, tmp_path: Path) -> None:
    store = BatchStore(core.store)
    now = int(time.time())
    for file_id, started in (("file-dead", now - 3600), ("file-live", now)):
        await store.begin_upload(FileMeta(file_id, "alpha", "batch", "", 0, 0, started, None))
        await store.save_part(file_id, 0, b"{}\n")
    env = edge_env(core, BATCH_UPLOAD_TIMEOUT_S="60")  # dead: older than 60 s + the sweep's
    async with running_edge(core.redis_url, tmp_path, **env):

        async def swept() -> bool:
            rows = await core.store.fetch("SELECT id FROM files")
            return [r["id"] for r in rows] == ["file-live"]
        await until(swept, 10, "swept")
        [row] = await core.store.fetch("SELECT COUNT(*) AS n FROM file_parts")
        assert int(row["n"]) == 1, "the upload still in progress keeps its part"
