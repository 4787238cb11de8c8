"""A small Server-Sent Events reader for tests, over httpx: events as the spec defines them,
comment lines kept (tests look for keep-alives)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL = ("done", "error", "cancelled")


@dataclass
class Sse:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Comment:
    text: str


def parse(lines: Iterator[str]) -> Iterator[Sse | Comment]:
    event_id: str | None = None
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield Sse(event_id, event, "\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            yield Comment(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


def open_events(http: httpx.Client, task_id: str, last_id: str | None = None,
                **headers: str) -> Any:
    """``http.stream`` on the task's event stream (a context manager yielding the response)."""
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    return http.stream("GET", f"/api/tasks/{task_id}/events", headers=headers)


def read_all(http: httpx.Client, task_id: str, last_id: str | None = None) -> list[Sse]:
    """Every event from ``last_id`` (or the start) to the end of the stream."""
    with open_events(http, task_id, last_id) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [e for e in parse(r.iter_lines()) if isinstance(e, Sse)]


def deltas(events: list[Sse], kind: str, discard_on_reset: bool = True) -> str:
    """The text of ``kind`` deltas, as a client that discards on ``reset`` assembles it."""
    text = ""
    for e in events:
        if e.event == "reset" and discard_on_reset:
            text = ""
        elif e.event == kind:
            text += e.json()["delta"]
    return text
