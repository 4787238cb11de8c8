"""Webhooks end to end: a receiver started by the test verifies every signature with the
``standardwebhooks`` reference package; retries keep the webhook-id; private targets are
refused; a rotated secret's predecessor verifies during the grace period only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook, WebhookVerificationError

from harness.waiting import until
from services.edge.webhooks import ssrf
from tests.integration.batch_kit import KEY_A, KEY_B, BatchRig, batch_rig, line
from tests.integration.edge_client import running_edge
from tests.integration.kit import Core, submit

AUTH = {"Authorization": f"Bearer {KEY_A}"}
HOOK_ENV = {"BATCH_API": "true", "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_TICK_S": "0.02",
            "WEBHOOK_RETRY_BASE_S": "0.05"}


@dataclass
class Receiver:
    """An HTTP receiver that records what it gets and fails the first ``fail`` requests."""

    fail: int = 0
    answer: int = 500
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        if len(self.got) <= self.fail:
            return web.Response(status=self.answer, headers={"Location": self.url + "/moved"})
        return web.Response(text="ok")

    def events(self, secret: str) -> list[dict[str, Any]]:
        """Every payload received, each verified by the reference implementation."""
        hook = Webhook(secret)
        return [hook.verify(body, headers) for headers, body in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    app.router.add_post("/hook/moved", r.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    r.url = str(server.make_url("/hook"))
    yield r
    await server.close()


async def register(rig: BatchRig, url: str, events: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = events
    r = await rig.edge.client.post("/api/webhooks", json=body, headers=AUTH)
    assert r.status == 201, await r.text()
    return dict(await r.json())


async def test_a_task_event_is_signed_and_verifies_with_the_reference_package(
        core: Core, tmp_path: Path, receiver: Receiver) -> None:
    async with batch_rig(core, tmp_path, **HOOK_ENV) as rig:
        endpoint = await register(rig, receiver.url, ["task.succeeded"])
        secret = endpoint["secret"]
        assert secret.startswith("whsec_")
        again = await register(rig, receiver.url)
        assert "secret" not in again, "the secret is shown once"
        listed = await (await rig.edge.client.get("/api/webhooks", headers=AUTH)).json()
        assert all("secret" not in e for e in listed["data"])
        beta = {"Authorization": f"Bearer {KEY_B}"}
        theirs = await (await rig.edge.client.get("/api/webhooks", headers=beta)).json()
        assert theirs == {"data": []}, "endpoints belong to their tenant"
        for method, path in (("DELETE", ""), ("POST", "/test"), ("GET", "/deliveries")):
            r = await rig.edge.client.request(
                method, f"/api/webhooks/{endpoint['id']}{path}", headers=beta)
            assert r.status == 404, (method, path)
        r = await rig.edge.client.post("/api/tasks", headers=AUTH, json={
            "prompt": "hello", "webhook_url": receiver.url + "?mine=1"})
        assert r.status == 202, await r.text()
        task_id = (await r.json())["id"]
        # the first endpoint (task.succeeded), the second (every event), the task's own URL
        await until(lambda: len(receiver.got) >= 3, 10, "three deliveries")
        payloads = receiver.events(secret)
        assert {p["type"] for p in payloads} == {"task.succeeded"}
        assert {p["data"]["id"] for p in payloads} == {task_id}
        assert {p["data"]["status"] for p in payloads} == {"succeeded"}
        assert len({h["webhook-id"] for h, _b in receiver.got}) == 3, "one id per target"
        for headers, _body in receiver.got:
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300
            assert headers["webhook-signature"].startswith("v1,")
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").verify(
                receiver.got[0][1], receiver.got[0][0])


async def test_a_batch_event_follows_the_batch(
        core: Core, tmp_path: Path, receiver: Receiver) -> None:
    async with batch_rig(core, tmp_path, **HOOK_ENV) as rig:
        secret = (await register(rig, receiver.url, ["batch.completed"]))["secret"]
        batch = await rig.run([line("a", "one"), line("b", "two")])
        await rig.wait(batch.id)
        await until(lambda: receiver.got, 10, "the batch.completed delivery")
        [event] = receiver.events(secret)
        assert event["type"] == "batch.completed"
        assert event["data"] == {"id": batch.id, "status": "completed"}


async def test_a_receiver_that_fails_three_times_gets_the_same_webhook_id(
        core: Core, tmp_path: Path, receiver: Receiver) -> None:
    receiver.fail = 3
    async with batch_rig(core, tmp_path, **HOOK_ENV) as rig:
        endpoint = await register(rig, receiver.url)
        r = await rig.edge.client.post(f"/api/webhooks/{endpoint['id']}/test", headers=AUTH)
        assert r.status == 202
        delivery_id = (await r.json())["delivery_id"]

        async def delivered() -> list[dict[str, Any]] | None:
            resp = await rig.edge.client.get(f"/api/webhooks/{endpoint['id']}/deliveries",
                                             headers=AUTH)
            data = (await resp.json())["data"]
            return data if data and data[0]["state"] == "delivered" else None
        [d] = await until(delivered, 10, "the test event to be delivered")
        assert d["id"] == delivery_id and d["attempts"] == 4
        assert [a["status"] for a in d["attempt_log"]] == [500, 500, 500, 200]
        assert [h["webhook-id"] for h, _b in receiver.got] == [delivery_id] * 4
        assert len({b for _h, b in receiver.got}) == 1, "the same body every time"
        payloads = receiver.events(endpoint["secret"])
        assert {p["type"] for p in payloads} == {"webhook.test"}
        gaps = [b["at"] - a["at"] for a, b in zip(d["attempt_log"], d["attempt_log"][1:],
                                                   strict=False)]
        # The waits double: each retry came no sooner than its own wait (WEBHOOK_RETRY_BASE_S
        # x 2^attempts). Bounds from below only: a loaded machine delays a retry, never hastens
        # it (comparing the measured gaps with each other failed under load).
        base_ms = float(HOOK_ENV["WEBHOOK_RETRY_BASE_S"]) * 1000
        assert all(gap >= base_ms * 2 ** n for n, gap in enumerate(gaps)), gaps


@pytest.mark.first_store_only
async def test_a_redirect_is_not_followed(core: Core, tmp_path: Path,
                                          receiver: Receiver) -> None:
    receiver.fail, receiver.answer = 1, 302
    async with batch_rig(core, tmp_path, **HOOK_ENV) as rig:
        endpoint = await register(rig, receiver.url)
        await rig.edge.client.post(f"/api/webhooks/{endpoint['id']}/test", headers=AUTH)
        await until(lambda: len(receiver.got) >= 2, 10, "two delivery attempts")
        resp = await rig.edge.client.get(f"/api/webhooks/{endpoint['id']}/deliveries",
                                         headers=AUTH)
        log = (await resp.json())["data"][0]["attempt_log"]
        assert log[0]["status"] == 302, "a redirect is a failed attempt, retried as such"


async def test_rotation_keeps_the_old_secret_valid_during_the_grace_period(
        core: Core, tmp_path: Path, receiver: Receiver) -> None:
    async with batch_rig(core, tmp_path, WEBHOOK_ROTATION_GRACE_S="2", **HOOK_ENV) as rig:
        endpoint = await register(rig, receiver.url)
        old = endpoint["secret"]
        r = await rig.edge.client.post("/api/webhook-secret/rotate", headers=AUTH)
        rotated = await r.json()
        new, until_s = rotated["secret"], rotated["previous_valid_until"]
        assert new != old and new.startswith("whsec_")

        async def test_event() -> tuple[dict[str, str], bytes]:
            before = len(receiver.got)
            await rig.edge.client.post(f"/api/webhooks/{endpoint['id']}/test", headers=AUTH)
            await until(lambda: len(receiver.got) > before, 10, "the test event")
            return receiver.got[-1]

        headers, body = await test_event()
        assert len(headers["webhook-signature"].split(" ")) == 2
        Webhook(old).verify(body, headers)
        Webhook(new).verify(body, headers)
        # The sender drops the old secret once int(time.time()) reaches previous_valid_until.
        await until(lambda: time.time() >= until_s, 10, "the old secret's validity to end")
        headers, body = await test_event()
        Webhook(new).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(body, headers)


async def test_private_targets_are_refused_without_the_setting(
        redis_url: str, tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY_A}:alpha",
                            BATCH_API="1") as edge:
        for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/x", "http://169.254.169.254/",
                    "http://[::1]/x", "http://localhost:8080/", "http://192.168.0.7/",
                    "ftp://example.com/", "http://[::ffff:127.0.0.1]/"):
            r = await edge.client.post("/api/webhooks", json={"url": url}, headers=AUTH)
            assert r.status == 422, (url, await r.text())
            r = await edge.client.post("/api/tasks", headers=AUTH,
                                       json={"prompt": "x", "webhook_url": url})
            assert r.status == 422, (url, await r.text())
        assert await edge.redis_keys() == [], "nothing queued"
    # A name is checked on what it resolves to, the address connected to.
    with pytest.raises(ssrf.BlockedAddress):
        await ssrf.SafeResolver(allow_private=False).resolve("localhost", 80)
    assert await ssrf.SafeResolver(allow_private=True).resolve("localhost", 80)


def test_delivery_payloads_are_thin() -> None:
    from services.edge.webhooks.events import deliveries
    [d] = deliveries("acme", "task.failed", "tsk_1", {"status": "failed"}, [("we_1", "u")])
    payload = orjson.loads(d.payload)
    assert set(payload) == {"id", "type", "created_at", "data"}
    assert payload["data"] == {"id": "tsk_1", "status": "failed"}
    [again] = deliveries("acme", "task.failed", "tsk_1", {"status": "failed"}, [("we_1", "u")])
    assert again.id == d.id, "the same event and target is the same delivery"


async def test_a_task_that_finishes_while_no_edge_runs_still_gets_its_event(
        core: Core, tmp_path: Path, receiver: Receiver) -> None:
    env = {"REDIS_PREFIX": core.keys.prefix, "STORE_URL": core.store.url,
           "EDGE_API_KEYS": f"{KEY_A}:alpha", **HOOK_ENV}
    async with running_edge(core.redis_url, tmp_path, **env) as edge:
        r = await edge.client.post("/api/webhooks", json={"url": receiver.url}, headers=AUTH)
        secret = (await r.json())["secret"]

        async def scanned() -> bool:  # the edge has read the tasks table once
            return bool(await core.store.fetch("SELECT 1 FROM webhook_cursor"))
        await until(scanned, 10, "the edge's first scan of the tasks table")
    task_id = await submit(core.steps, tenant="alpha")
    await core.burst()  # the task runs and ends while no edge is up
    assert receiver.got == []
    async with running_edge(core.redis_url, tmp_path, **env):
        await until(lambda: receiver.got, 10, "the delivery of the task that ended meanwhile")
    [event] = receiver.events(secret)
    assert event["type"] == "task.succeeded" and event["data"]["id"] == task_id


@pytest.mark.first_store_only
async def test_deleting_an_endpoint_ends_its_pending_deliveries(
        core: Core, tmp_path: Path, receiver: Receiver) -> None:
    receiver.fail = 1000
    async with batch_rig(core, tmp_path, **HOOK_ENV) as rig:
        endpoint = await register(rig, receiver.url)
        await rig.edge.client.post(f"/api/webhooks/{endpoint['id']}/test", headers=AUTH)
        await until(lambda: receiver.got, 10, "a first delivery attempt")
        r = await rig.edge.client.delete(f"/api/webhooks/{endpoint['id']}", headers=AUTH)
        assert r.status == 200

        async def state() -> str:
            [row] = await core.store.fetch("SELECT state FROM webhook_deliveries")
            return str(row["state"])
        await until(lambda: _equals(state(), "failed"), 10, "the pending delivery to fail")
        r = await rig.edge.client.get(f"/api/webhooks/{endpoint['id']}/deliveries",
                                      headers=AUTH)
        assert r.status == 404


async def _equals(value: Any, expected: str) -> bool:
    return bool(await value == expected)


# Loopback spelled as a name: each is what the resolver (getaddrinfo, inet_aton's forms)
# turns into 127.0.0.1, so every delivery would be refused; registration refuses them first.
LOOPBACK_NAMES = ["2130706433", "0x7f000001", "127.1", "localhost.", "0177.0.0.1",
                  "0x7f.1", "LOCALHOST.", "api.localhost", "017700000001"]


@pytest.mark.first_store_only
@pytest.mark.parametrize("host", LOOPBACK_NAMES)
async def test_names_of_a_blocked_address_are_refused_at_registration(
        redis_url: str, tmp_path: Path, host: str) -> None:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY_A}:alpha",
                            BATCH_API="1") as edge:
        url = f"http://{host}:8080/hook"
        r = await edge.client.post("/api/webhooks", json={"url": url}, headers=AUTH)
        assert r.status == 422, (url, await r.text())
        assert (await r.json())["error"]["code"] == "invalid_webhook_url"
        r = await edge.client.post("/api/tasks", headers=AUTH,
                                   json={"prompt": "x", "webhook_url": url})
        assert r.status == 422, (url, await r.text())
        assert await edge.redis_keys() == [], "nothing queued"
        assert edge.store_rows("webhook_endpoints") == 0


def _loopback_names_in_hosts_file() -> list[str]:
    """Names other than localhost that /etc/hosts maps to a loopback address."""
    names = []
    for entry in Path("/etc/hosts").read_text().splitlines():
        ip, *aliases = entry.split("#", 1)[0].split() or [""]
        if ip.startswith("127.") or ip == "::1":
            names += [a for a in aliases if "localhost" not in a]
    return names


@pytest.mark.first_store_only
async def test_a_name_the_resolver_maps_to_loopback_is_refused_at_registration(
        redis_url: str, tmp_path: Path) -> None:
    names = _loopback_names_in_hosts_file()
    if not names:
        pytest.skip("no name other than localhost maps to loopback in /etc/hosts")
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY_A}:alpha",
                            BATCH_API="1") as edge:
        r = await edge.client.post("/api/webhooks", json={"url": f"http://{names[0]}/hook"},
                                   headers=AUTH)
        assert r.status == 422, (names[0], await r.text())
        assert "resolves to a blocked address" in (await r.json())["error"]["message"]
        assert edge.store_rows("webhook_endpoints") == 0


async def test_a_response_ends_with_openais_webhook_event(
        core: Core, tmp_path: Path, receiver: Receiver) -> None:
    """A response's task gets response.completed / .incomplete / .failed / .cancelled, about
    its resp_ id; a chat completion beside it keeps task.succeeded."""
    quiet = {"reasoning_tokens": 0, "content_tokens": 5}
    async with batch_rig(core, tmp_path, **HOOK_ENV) as rig:
        secret = (await register(rig, receiver.url))["secret"]
        done = await rig.client.responses.create(model="mock-r1", input="a",
                                                 metadata={"mock": quiet})
        cut = await rig.client.responses.create(model="mock-r1", input="b",
                                                max_output_tokens=2, metadata={"mock": quiet})
        assert cut.status == "incomplete"
        failed = await rig.client.responses.create(
            model="mock-r1", input="c", metadata={"mock": {**quiet, "fault": {"status": 400}}})
        assert failed.status == "failed"
        slow = await rig.client.responses.create(
            model="mock-r1", input="d", background=True,
            metadata={"mock": {**quiet, "ttft_ms": 30_000}})
        assert (await rig.client.responses.cancel(slow.id)).status == "cancelled"
        chat = await rig.client.chat.completions.create(
            model="mock-r1", messages=[{"role": "user", "content": "e"}],
            metadata={"mock": quiet})  # type: ignore[arg-type]
        await until(lambda: len(receiver.got) >= 5, 10, "five deliveries")
        got = {p["data"]["id"]: (p["type"], p["data"]["status"])
               for p in receiver.events(secret)}
        assert got == {done.id: ("response.completed", "completed"),
                       cut.id: ("response.incomplete", "incomplete"),
                       failed.id: ("response.failed", "failed"),
                       slow.id: ("response.cancelled", "cancelled"),
                       chat.id.removeprefix("chatcmpl-"): ("task.succeeded", "succeeded")}
        # An endpoint may subscribe to one of them alone.
        only = await register(rig, receiver.url + "?only=1", ["response.failed"])
        assert only["events"] == ["response.failed"]


@pytest.mark.first_store_only
async def test_a_host_name_no_resolver_takes_is_refused_not_a_500(
        redis_url: str, tmp_path: Path) -> None:
    """Found by schemathesis: a label longer than 63 characters fails IDNA encoding in the
    resolver (UnicodeError), which was answered with a 500."""
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY_A}:alpha",
                            BATCH_API="1") as edge:
        url = f"https://{'a' * 64}.example.com/hook"
        r = await edge.client.post("/api/webhooks", json={"url": url}, headers=AUTH)
        assert r.status == 422, await r.text()
        assert (await r.json())["error"]["code"] == "invalid_webhook_url"
        assert edge.store_rows("webhook_endpoints") == 0
