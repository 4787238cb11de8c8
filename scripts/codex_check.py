"""``make codex-check``: the Codex CLI, unchanged, runs one turn through Sluice against the mock.

Installs ``@openai/codex`` from npm into ``.codex-check/npm`` (once), starts the whole stack as
processes (a redis-server of its own, the mock recording every request, an edge, a
coordinator, a processor; SQLite), writes a Codex config whose model provider is Sluice's
``/v1`` with ``wire_api = "responses"``, runs ``codex exec "say hello"``, and reads back what
the mock was asked and answered. The mock calls the first function tool it is offered, so a
whole turn is: a call offering Codex's tools, answered with a call of one of them; Codex runs
it and sends its output; a call whose last message is that output, answered with text, which
Codex prints. Codex sends ``store: false``, so Sluice keeps nothing of its turns: every task
row is a tombstone. Too large for every CI run (npm, a Node binary, a whole stack): run it
before resolving a change to ``/v1/responses``. Exit status 0 when all of that held.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from harness.processes import ROOT, RedisServer, Stack

FOLDER = ROOT / ".codex-check"
NPM_PREFIX = FOLDER / "npm"
CODEX = NPM_PREFIX / "node_modules" / ".bin" / "codex"
PROMPT = "say hello"
# What the mock's tool calls ask (MOCKAI_TOOL_ARGUMENTS): the first tool Codex offers is its
# exec_command; its output comes back in the next call, where it is looked for.
COMMAND = "echo sluice-tool-ran"
TOOL_OUTPUT = "sluice-tool-ran"
TURN_S = 180


def install() -> Path:
    if not CODEX.exists():
        npm = shutil.which("npm")
        if npm is None:
            sys.exit("npm is not installed (apt-get install nodejs npm)")
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix",
                        str(NPM_PREFIX), "@openai/codex"], check=True)
    return CODEX


def config(edge_url: str) -> str:
    return (f'model = "mock-r1"\n'
            f'model_provider = "sluice"\n'
            f'approval_policy = "never"\n'
            f'sandbox_mode = "read-only"\n\n'
            f'[model_providers.sluice]\n'
            f'name = "Sluice"\n'
            f'base_url = "{edge_url}/v1"\n'
            f'wire_api = "responses"\n'
            f'env_key = "SLUICE_API_KEY"\n')


def provider_calls(stack: Stack) -> list[dict[str, Any]]:
    """What the mock was asked and answered, in order."""
    return list(httpx.get(f"{stack.mock_url}/mock/requests").json()["requests"])


def describe(calls: list[dict[str, Any]]) -> None:
    for n, call in enumerate(calls, 1):
        body = call["body"] or {}
        messages = body.get("messages") or []
        tools = [t.get("function", {}).get("name") for t in body.get("tools") or []]
        print(f"--- provider call {n}: {len(messages)} messages, the last a "
              f"{messages[-1].get('role') if messages else None!r}; {len(tools)} tools offered "
              f"{tools[:8]}; finish_reason={call['finish_reason']!r}"
              + ("" if call["finish_reason"] == "tool_calls" else
                 f"; content={call['content']!r}"))
        for message in messages:
            for tc in message.get("tool_calls") or []:
                print(f"    replayed call {tc['id']}: {tc['function']['name']}"
                      f"({tc['function']['arguments'][:120]})")
            if message.get("role") == "tool":
                print(f"    tool output for {message.get('tool_call_id')}: "
                      f"{str(message.get('content'))[:300]!r}")


def turn_held(calls: list[dict[str, Any]], stdout: str) -> list[str]:
    """What went wrong with the turn (nothing: it held). The tool call is read from the call
    that replays it (the mock's record of a tool-call answer keeps its plain text's fields)."""
    wrong = []
    offered = {t.get("function", {}).get("name") for c in calls[:1]
               for t in (c["body"] or {}).get("tools") or []}
    last = calls[-1] if calls else {"body": {}, "content": "", "finish_reason": None}
    messages = (last["body"] or {}).get("messages") or []
    made = {tc["id"]: tc["function"]["name"] for m in messages for tc in m.get("tool_calls") or []}
    outputs = {m.get("tool_call_id"): str(m.get("content")) for m in messages
               if m.get("role") == "tool"}
    if not made or not set(made.values()) <= offered:
        wrong.append("no call of a tool Codex offered came back to the provider")
    elif set(outputs) != set(made):
        wrong.append("Codex did not send the output of every call")
    elif not any(TOOL_OUTPUT in out for out in outputs.values()):
        wrong.append(f"the tool's output does not hold {TOOL_OUTPUT!r} (did Codex run it?)")
    if not messages or messages[-1].get("role") != "tool" or last["finish_reason"] != "stop":
        wrong.append("the last provider call did not answer a tool's output with text")
    elif not last["content"] or last["content"].strip() not in stdout:
        wrong.append("codex did not print the mock's text answer")
    return wrong


def rows(stack: Stack) -> list[tuple[str, str]]:
    """Each task row's status and request."""
    with sqlite3.connect(stack.store_path) as db:
        return [(status, request) for status, request in
                db.execute("SELECT status, request FROM tasks ORDER BY created_at")]


def main() -> int:
    codex = install()
    print(subprocess.run([str(codex), "--version"], capture_output=True, text=True).stdout)
    with tempfile.TemporaryDirectory(prefix="codex-check-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp / "redis", appendonly=False).start()
        stack = Stack(tmp, redis.url, {"MOCKAI_CONTENT_TOKENS": "12",
                                       "MOCKAI_REASONING_TOKENS": "4",
                                       "MOCKAI_RECORD_BODIES": "true",
                                       "MOCKAI_TOOL_ARGUMENTS": json.dumps({"cmd": COMMAND})},
                      store_url=str(tmp / "sluice.db"))
        try:
            stack.up()
            home = tmp / "codex-home"
            home.mkdir()
            (home / "config.toml").write_text(config(stack.edge_url))
            work = tmp / "work"
            work.mkdir()
            env = {**os.environ, "CODEX_HOME": str(home), "SLUICE_API_KEY": "unused",
                   "NO_COLOR": "1"}
            print(f"--- codex exec {PROMPT!r} through {stack.edge_url}/v1 (wire_api responses)")
            run = subprocess.run([str(codex), "exec", "--skip-git-repo-check", PROMPT],
                                 cwd=work, env=env, capture_output=True, text=True,
                                 timeout=TURN_S, stdin=subprocess.DEVNULL)
            print(f"--- exit status {run.returncode}\n--- stdout\n{run.stdout}"
                  f"--- stderr\n{run.stderr}")
            health = httpx.get(f"{stack.edge_url}/api/health").status_code
            calls = provider_calls(stack)
            describe(calls)
            wrong = turn_held(calls, run.stdout)
            if run.returncode != 0:
                wrong.append(f"codex exited {run.returncode}")
            kept = rows(stack)
            print(f"--- Sluice's rows: {[status for status, _request in kept]}")
            if any(status != "deleted" or request != "{}" for status, request in kept):
                wrong.append("a row of a store:false turn is not a tombstone")
            print(f"--- edge health {health}; " + ("the turn held: a tool call, its output, "
                  "the mock's text printed" if not wrong else "; ".join(wrong)))
            ok = not wrong
            if not ok:
                print(stack.logs())
            return 0 if ok else 1
        finally:
            stack.down()
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
