"""``make codex-check``: the Codex CLI, unchanged, runs one turn through Sluice against the mock.

Installs ``@openai/codex`` from npm into ``.codex-check/npm`` (once), starts the whole stack as
processes (a redis-server of its own, the mock, an edge, a coordinator, a processor; SQLite),
writes a Codex config whose model provider is Sluice's ``/v1`` with ``wire_api = "responses"``,
runs ``codex exec "say hello"`` and checks that it printed the answer Sluice stored for the
turn. Too large for every CI run (npm, a Node binary, a whole stack): run it before resolving
a change to ``/v1/responses``. Exit status 0 when the turn completed with the mock's answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from harness.processes import ROOT, RedisServer, Stack

FOLDER = ROOT / ".codex-check"
NPM_PREFIX = FOLDER / "npm"
CODEX = NPM_PREFIX / "node_modules" / ".bin" / "codex"
PROMPT = "say hello"
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


def last_answer(stack: Stack) -> str | None:
    """The content of the last response Sluice stored (Codex's turn)."""
    import sqlite3
    with sqlite3.connect(stack.store_path) as db:
        row = db.execute("SELECT status, content FROM tasks ORDER BY created_at DESC "
                         "LIMIT 1").fetchone()
    print(f"--- Sluice stored the turn: status={row[0] if row else None}")
    return row[1] if row and row[0] == "succeeded" else None


def main() -> int:
    codex = install()
    print(subprocess.run([str(codex), "--version"], capture_output=True, text=True).stdout)
    with tempfile.TemporaryDirectory(prefix="codex-check-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp / "redis", appendonly=False).start()
        stack = Stack(tmp, redis.url, {"MOCKAI_CONTENT_TOKENS": "12",
                                       "MOCKAI_REASONING_TOKENS": "4"},
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
            answer = last_answer(stack)
            ok = run.returncode == 0 and answer is not None and answer.strip() in run.stdout
            print(f"--- edge health {health}; the stored answer "
                  f"{'is' if ok else 'is NOT'} what codex printed: {answer!r}")
            if not ok:
                print(stack.logs())
            return 0 if ok else 1
        finally:
            stack.down()
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
