"""The peers' own virtualenvs (``.bench-venvs/<peer>``), made on first use.

arq 0.28 pins ``redis<6`` and cannot share a virtualenv with our redis-py; each peer gets its
own, with the same httpx, orjson and uvloop versions as ours so the job's client code is the
same. A stamp file holds the requirement list: a changed pin rebuilds the venv.
"""

from __future__ import annotations

import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from bench.procs import ROOT

VENVS = ROOT / ".bench-venvs"
PEERS = {
    "arq": ["arq==0.28.0"],
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4"],
}


def requirements(peer: str) -> list[str]:
    same_as_ours = [f"{name}=={version(name)}" for name in ("httpx", "orjson", "uvloop")]
    return [*PEERS[peer], *same_as_ours]


def python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def ensure(peer: str) -> Path:
    """The peer venv's interpreter, created or updated when its requirements changed."""
    reqs = requirements(peer)
    venv = VENVS / peer
    stamp = venv / ".bench-installed"
    if stamp.exists() and stamp.read_text().split() == reqs and python(peer).exists():
        return python(peer)
    t = time.monotonic()
    print(f"bench: creating {venv.relative_to(ROOT)} ({' '.join(reqs)})", flush=True)
    if not python(peer).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python(peer)), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", *reqs], check=True)
    stamp.write_text("\n".join(reqs) + "\n")
    print(f"bench: {peer} venv ready in {time.monotonic() - t:.0f} s", flush=True)
    return python(peer)


def taskiq_cli() -> Path:
    return VENVS / "taskiq" / "bin" / "taskiq"
