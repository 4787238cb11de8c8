"""``python -m services.<name> --help``: each service prints the settings it reads (every
environment variable, its default, its value now with secrets as ***) and exits 0 without
starting anything. The variables expected are found in the code (every literal name passed
to an ``Env`` read), not copied from a list."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.processes import ROOT, free_port

SERVICES = ("edge", "coordinator", "processor", "mockai")
CANARIES = {"EDGE_API_KEYS": "sk-help-canary-1:acme", "EDGE_ADMIN_KEYS": "sk-help-canary-2",
            "AI_API_KEY": "sk-help-canary-3", "METRICS_TOKEN": "help-canary-4",
            "MOCKAI_API_KEY": "sk-help-canary-5"}
# An address nothing answers on: a service that started would wait for Redis, not exit.
REDIS = "redis://sluice:help-canary-6@127.0.0.1:9/0"
# Every read of the environment names its variable as a string literal.
READ = re.compile(r"\.(?:text|optional|exact|integer|number|flag|choice|url|note)\(\s*"
                  r"\"([A-Z][A-Z0-9_]+)\"")


def names_read_by_the_code() -> set[str]:
    found: set[str] = set()
    for folder in ("services", "shared"):
        for path in (ROOT / folder).rglob("*.py"):
            found.update(READ.findall(path.read_text()))
    return found


def run_help(service: str, tmp: Path, flag: str = "--help") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": REDIS, "STORE_URL": str(tmp / "help.db"),
           "EDGE_PORT": str(free_port()), "MOCKAI_PORT": str(free_port()),
           "METRICS_PORT": str(free_port()), "EDGE_HOST": "127.0.0.1", **CANARIES}
    return subprocess.run([sys.executable, "-m", f"services.{service}", flag], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("help")
    out = {}
    # The four at once: each is a Python start-up and its imports, half a second apiece.
    with ThreadPoolExecutor(len(SERVICES)) as pool:
        runs = dict(zip(SERVICES, pool.map(lambda s: run_help(s, tmp), SERVICES), strict=True))
    for service, done in runs.items():
        assert done.returncode == 0, f"{service}: {done.returncode}\n{done.stderr[-2000:]}"
        out[service] = done.stdout
    return out


def listed(text: str) -> dict[str, str]:
    """VARIABLE -> the rest of its line, from the settings table."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"  ([A-Z][A-Z0-9_]+)\s+(.*)$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_variable_the_code_reads_is_listed_by_a_service(helps: dict[str, str]) -> None:
    shown = set().union(*(listed(t) for t in helps.values()))
    missing = names_read_by_the_code() - shown
    assert not missing, f"read by the code, listed by no --help: {sorted(missing)}"


@pytest.mark.parametrize("service", SERVICES)
def test_help_shows_settings_and_defaults_never_a_secret(helps: dict[str, str],
                                                         service: str) -> None:
    text = helps[service]
    assert text.startswith(f"usage: python -m services.{service}")
    rows = listed(text)
    for canary in (*CANARIES.values(), "help-canary-6"):
        assert canary.split(":")[0] not in text, f"{service} printed a secret"
    for name in set(CANARIES) & set(rows):
        assert rows[name].split()[-1] == "***", (name, rows[name])
    if service == "mockai":
        assert rows["MOCKAI_PORT"].split()[0] == "8090"
        assert "METRICS_PORT" in rows
    else:
        # Defaults are shown; a URL's password is not.
        assert rows["REDIS_URL"].split() == ["redis://127.0.0.1:6379/0",
                                             "redis://sluice:***@127.0.0.1:9/0"]
        assert rows["LOG_LEVEL"].split()[0] == "info"
    if service in ("edge", "processor"):
        # Where the provider is called when AI_BASE_URL is unset: the mock's port.
        assert "MOCKAI_PORT" in rows and "AI_MODEL" in rows


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_at_once_even_with_a_bad_setting(tmp_path: Path, flag: str) -> None:
    """A bad value is reported after the table (exit 0: help was asked for, not a start)."""
    env_bad = subprocess.run(
        [sys.executable, "-m", "services.edge", flag], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin", "STORE_URL": str(tmp_path / "x.db"),
                         "EDGE_PORT": "eighty", "REDIS_URL": REDIS})
    assert env_bad.returncode == 0, env_bad.stderr
    assert "EDGE_PORT: expected an integer, got 'eighty'" in env_bad.stdout
