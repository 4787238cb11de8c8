"""Prompts, completions and keys never reach a log line or an error body.

Canary values (an API key, a prompt, the provider's key, a wrong key) go through every path that
handles them: submit, read, events, both OpenAI modes, refused requests, and a provider error
that quotes our provider key back (as OpenAI's does). Then every service's log is read."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from harness.processes import running_stack


def canary(kind: str) -> str:
    return f"canary-{kind}-{uuid.uuid4().hex}"


def test_canaries_never_reach_logs_or_error_bodies(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    key, prompt, ai_key, wrong_key = (canary("key"), canary("prompt"), canary("ai-key"),
                                      canary("wrong-key"))
    env = {"EDGE_API_KEYS": f"{key}:canary", "AI_API_KEY": ai_key, "MOCKAI_API_KEY": ai_key,
           "LOG_LEVEL": "debug"}
    secrets = {"api key": key, "prompt": prompt, "provider key": ai_key, "wrong key": wrong_key}
    with running_stack(tmp_path, redis_url, env=env) as stack:
        api = api_factory(stack.edge_url, key)
        messages = [{"role": "user", "content": f"{prompt} tell me"}]
        completions: list[str] = []

        task = api.wait_terminal(api.submit({"messages": messages}))
        assert task["status"] == "succeeded", task
        completions.append(task["result"]["content"])
        with api.http.stream("GET", f"/api/tasks/{task['id']}/events") as r:
            assert r.status_code == 200 and "event: done" in r.read().decode()
        r = api.http.post("/v1/chat/completions", json={"messages": messages})
        assert r.status_code == 200, r.text
        completions.append(r.json()["choices"][0]["message"]["content"])
        with api.http.stream("POST", "/v1/chat/completions",
                             json={"messages": messages, "stream": True}) as r:
            assert r.status_code == 200 and "[DONE]" in r.read().decode()

        # Refused requests: the bodies name fields, never their values or the keys.
        refusals = [
            api.http.post("/api/tasks", json={"messages": [{"role": prompt, "content": "x"}]}),
            api.http.post("/api/tasks", json={"prompt": prompt, "max_tokens": prompt}),
            api.http.post("/api/tasks", content=f'{{"prompt": "{prompt}"',
                          headers={"Content-Type": "application/json"}),
            api.http.post("/v1/chat/completions", json={"messages": messages, "top_p": prompt}),
            api.http.post("/api/tasks", json={"prompt": prompt},
                          headers={"Authorization": f"Bearer {wrong_key}"}),
            api.http.get("/api/async-status", headers={"Authorization": f"Bearer {wrong_key}"}),
        ]
        for r in refusals:
            assert 400 <= r.status_code < 500
            for name, value in secrets.items():
                assert value not in r.text, f"{name} echoed in a {r.status_code} body"

        # The provider quotes our key back in its error: clients get its message without it.
        quoted = {"mock": {"fault": {"status": 401, "key": "leak-401",
                                     "message": f"Incorrect API key provided: {ai_key}"}}}
        failed = api.wait_terminal(api.submit({"prompt": "x", "metadata": quoted}))
        assert failed["status"] == "failed"
        assert "Incorrect API key provided" in failed["error"]["message"]
        assert ai_key not in str(failed["error"])
        status = api.http.get("/api/ai-status")
        assert status.status_code == 200 and status.json()["api_key_configured"] is True
        assert "Incorrect API key provided" in (status.json()["last_error"] or "")
        assert ai_key not in status.text and key not in status.text

        logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
        assert {name.split("-")[0] for name in logs} >= {"edge", "processor", "coordinator"}
        assert all(logs.values())
        for name, value in [*secrets.items(),
                            *(("completion", c) for c in completions if len(c) >= 16)]:
            for log_name, text in logs.items():
                assert value not in text, f"{name} found in {log_name}"
