"""A response's stream events, as OpenAI names and orders them, built from its task's events.

:class:`ResponseEvents` is a state machine fed the task's events in order (``status``,
``reasoning``, ``content``, ``refusal``, ``reset``, then one of ``done``, ``error``,
``cancelled``; and tool-call pieces, :meth:`ResponseEvents.tool_call`). Each feed returns the
Responses events it makes, numbered from 0 without gaps. It is pure and keeps no clock: the
same task events always give the same events with the same numbers, which is what makes
``GET /v1/responses/{id}?stream=true&starting_after=N`` work from any edge: it replays the
task's events into a new machine and sends what comes after N.

What a client sees, in order::

    response.created (status queued)
    response.in_progress                    when the task starts running
    for each output item, in output_index order:
      response.output_item.added
      reasoning: response.content_part.added, response.reasoning_text.delta...,
                 response.reasoning_text.done, response.content_part.done
      message:   response.content_part.added, response.output_text.delta... (or
                 response.refusal.delta...), response.output_text.done, response.content_part.done
      call:      response.function_call_arguments.delta..., response.function_call_arguments.done
      response.output_item.done
    response.completed | response.incomplete | response.failed   (or ``error``: cannot go on)

An item stays open while its kind of text keeps coming; text of another kind closes it (a
reasoning model's thinking, then its answer, then its calls). Interleaved thinking after the
answer began opens a new reasoning item. Tool calls are keyed by the provider's ``index``; each
stays open until text comes or the answer ends.

A retried attempt (``reset``) repeats the text already sent: it is held back while it does,
and only what goes beyond is sent (:class:`~services.edge.openai.chat.api.Relay`). A retry
that says something else cannot be spliced onto what the client holds: the stream ends with an
``error`` event (``retry_diverged``), and the response goes on; its answer is retrieved by id.

The final response object's output is the items as streamed. When the end event carries more
than the deltas brought (a client that resumes after Redis has forgotten the task's events
gets its end alone), the rest is sent as deltas first, so every stream carries the whole answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from services.edge.openai.chat.api import Diverged, Relay
from services.edge.openai.responses import protocol
from services.edge.openai.responses.protocol import Echo
from services.edge.openai.responses.translate import ToolNames, call_id_for

TEXT_KINDS = ("reasoning", "content", "refusal")
DIVERGED_CODE = "retry_diverged"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One piece of a streamed tool call, as a Chat Completions chunk gives it: the call's
    ``index``, and its ``id`` and function ``name`` (first piece) and an ``arguments`` piece."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class _Item:
    """An output item being streamed: its dict (what the SDK will hold) and open parts."""

    __slots__ = ("closed", "index", "item", "parts")

    def __init__(self, index: int, item: dict[str, Any]) -> None:
        self.index, self.item, self.closed = index, item, False
        self.parts: dict[str, int] = {}  # text kind -> content_index


class ResponseEvents:
    """The Responses events of one response, fed its task's events in order."""

    def __init__(self, resp_id: str, echo: Echo, *, model: str, created_at: int,
                 names: ToolNames | None = None) -> None:
        self.resp_id, self.echo, self.model, self.created_at = resp_id, echo, model, created_at
        self.names = names or ToolNames()
        self.seq = 0
        self.started = self.running = self.ended = False
        self.items: list[_Item] = []
        self._text_item: _Item | None = None  # the open reasoning or message item
        self._relays = {kind: Relay() for kind in TEXT_KINDS}
        self._calls: dict[int, tuple[_Item, Relay]] = {}

    # --- feeding ---------------------------------------------------------------------------
    def feed(self, kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """A task event (its type and decoded data) -> the Responses events it makes."""
        if self.ended:
            return []
        out: list[dict[str, Any]] = []
        try:
            if kind == "status":
                self._status(data.get("status"), out)
            elif kind in TEXT_KINDS:
                self._text(kind, data.get("delta") or "", out)
            elif kind == "reset":
                for relay in (*self._relays.values(), *(r for _, r in self._calls.values())):
                    relay.reset()
            elif kind == "done":
                self._done(data.get("result") or {}, seconds(data.get("completed_at")), out)
            elif kind == "error":
                self._end(protocol.FAILED, out, error=protocol.error_object(data.get("error")),
                          completed_at=seconds(data.get("completed_at")))
            elif kind == "cancelled":
                self._end(protocol.CANCELLED, out,
                          completed_at=seconds(data.get("completed_at")))
            # Other kinds (a later version's) change nothing a Responses client sees.
        except Diverged:
            out.append(self._error_event(
                DIVERGED_CODE, "a retry of the provider call does not continue the text "
                "already streamed, so this stream ends here; the response goes on and its "
                f"answer will be at GET /v1/responses/{self.resp_id}"))
        return out

    def tool_call(self, delta: ToolCallDelta) -> list[dict[str, Any]]:
        """A piece of a streamed tool call -> the Responses events it makes."""
        if self.ended:
            return []
        out: list[dict[str, Any]] = []
        try:
            self._call_piece(delta, out)
        except Diverged:
            out.append(self._error_event(DIVERGED_CODE, "a retry of the provider call does "
                                         "not continue the tool call already streamed"))
        return out

    def abort(self, code: str, message: str) -> list[dict[str, Any]]:
        """The ``error`` event of a stream that cannot go on (the response itself goes on)."""
        if self.ended:
            return []
        out = self._begin()
        out.append(self._error_event(code, message))
        return out

    # --- the response object ---------------------------------------------------------------
    def response(self, status: str, **extra: Any) -> dict[str, Any]:
        return protocol.response_object(
            self.resp_id, self.echo, model=self.model, created_at=self.created_at,
            status=status, output=[i.item for i in self.items], **extra)

    # --- internals ---------------------------------------------------------------------------
    def _emit(self, out: list[dict[str, Any]], kind: str, **fields: Any) -> None:
        out.append({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1

    def _begin(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            self._emit(out, "response.created",
                       response=_copy(self.response(protocol.QUEUED)))
        return out

    def _run(self, out: list[dict[str, Any]]) -> None:
        out += self._begin()
        if not self.running:
            self.running = True
            self._emit(out, "response.in_progress",
                       response=_copy(self.response(protocol.IN_PROGRESS)))

    def _status(self, status: Any, out: list[dict[str, Any]]) -> None:
        out += self._begin()
        if status == "running":
            self._run(out)

    def _open(self, item: dict[str, Any], out: list[dict[str, Any]]) -> _Item:
        opened = _Item(len(self.items), item)
        self.items.append(opened)
        self._emit(out, "response.output_item.added", output_index=opened.index,
                   item=_copy(item))
        return opened

    def _text(self, kind: str, delta: str, out: list[dict[str, Any]]) -> None:
        text = self._relays[kind].feed(delta)
        if not text:
            return
        self._run(out)
        want = "reasoning" if kind == "reasoning" else "message"
        item = self._text_item
        if item is None or item.item["type"] != want:
            self._close_all(out)
            iid = protocol.item_id(want, self.resp_id, len(self.items))
            new = (protocol.reasoning_item(iid, "", protocol.IN_PROGRESS) if want == "reasoning"
                   else protocol.message_item(iid, [], protocol.IN_PROGRESS))
            item = self._text_item = self._open(new, out)
        content = item.item["content"]
        if kind not in item.parts:
            item.parts[kind] = len(content)
            part = (protocol.text_part("") if kind == "content" else
                    protocol.refusal_part("") if kind == "refusal" else
                    {"type": "reasoning_text", "text": ""})
            content.append(part)
            self._emit(out, "response.content_part.added", item_id=item.item["id"],
                       output_index=item.index, content_index=item.parts[kind],
                       part=_copy(part))
        index = item.parts[kind]
        where = {"item_id": item.item["id"], "output_index": item.index,
                 "content_index": index}
        if kind == "refusal":
            content[index]["refusal"] += text
            self._emit(out, "response.refusal.delta", **where, delta=text)
        elif kind == "content":
            content[index]["text"] += text
            self._emit(out, "response.output_text.delta", **where, delta=text, logprobs=[])
        else:
            content[index]["text"] += text
            self._emit(out, "response.reasoning_text.delta", **where, delta=text)

    def _call_piece(self, delta: ToolCallDelta, out: list[dict[str, Any]]) -> None:
        known = self._calls.get(delta.index)
        if known is None:
            self._run(out)
            if self._text_item is not None:
                self._close(self._text_item, out)
            index = len(self.items)
            namespace, name = self.names.split(delta.name or "")
            body = protocol.function_call_item(
                protocol.item_id("function_call", self.resp_id, index),
                delta.id or call_id_for(self.resp_id, index), name, namespace, "",
                protocol.IN_PROGRESS)
            known = self._calls[delta.index] = (self._open(body, out), Relay())
        item, relay = known
        if item.item["name"] == "" and delta.name:  # a provider that names it late
            namespace, item.item["name"] = self.names.split(delta.name)
            if namespace is not None:
                item.item["namespace"] = namespace
        piece = relay.feed(delta.arguments)
        if not piece:
            return
        if item.closed:
            raise Diverged  # more of a call the client was told was whole
        item.item["arguments"] += piece
        self._emit(out, "response.function_call_arguments.delta", item_id=item.item["id"],
                   output_index=item.index, delta=piece)

    def _close(self, item: _Item, out: list[dict[str, Any]], status: str = protocol.COMPLETED,
               ) -> None:
        if item.closed:
            return
        item.closed = True
        if item is self._text_item:
            self._text_item = None
        body = item.item
        if body["type"] == "function_call":
            self._emit(out, "response.function_call_arguments.done", item_id=body["id"],
                       output_index=item.index, name=body["name"], arguments=body["arguments"])
        for kind, index in item.parts.items():
            part = body["content"][index]
            where = {"item_id": body["id"], "output_index": item.index, "content_index": index}
            if kind == "refusal":
                self._emit(out, "response.refusal.done", **where, refusal=part["refusal"])
            elif kind == "content":
                self._emit(out, "response.output_text.done", **where, text=part["text"],
                           logprobs=[])
            else:
                self._emit(out, "response.reasoning_text.done", **where, text=part["text"])
            self._emit(out, "response.content_part.done", **where, part=_copy(part))
        body["status"] = status
        self._emit(out, "response.output_item.done", output_index=item.index,
                   item=_copy(body))

    def _close_all(self, out: list[dict[str, Any]], last_status: str = protocol.COMPLETED,
                   ) -> None:
        still = [item for item in self.items if not item.closed]
        for n, item in enumerate(still):
            self._close(item, out, last_status if n == len(still) - 1 else protocol.COMPLETED)

    def _done(self, result: dict[str, Any], completed_at: int | None,
              out: list[dict[str, Any]]) -> None:
        self._run(out)
        for kind, field in (("reasoning", "reasoning_content"), ("content", "content"),
                            ("refusal", "refusal")):
            relay = self._relays[kind]
            relay.check_finished()
            whole = result.get(field) or ""
            if not whole.startswith(relay.sent):
                raise Diverged
            if len(whole) > len(relay.sent):  # what the deltas did not bring
                self._text(kind, whole[len(relay.sent):], out)
        for n, call in enumerate(result.get("tool_calls") or []):
            function = call.get("function") or {}
            index = call.get("index", n)
            known = self._calls.get(index)
            if known is not None:
                known[1].check_finished()
            sent = known[1].sent if known is not None else ""
            arguments = function.get("arguments") or ""
            if not arguments.startswith(sent):
                raise Diverged
            self._call_piece(ToolCallDelta(index, call.get("id"), function.get("name"),
                                           arguments[len(sent):]), out)
        if not any(i.item["type"] in ("message", "function_call") for i in self.items):
            self._close_all(out)
            iid = protocol.item_id("message", self.resp_id, len(self.items))
            empty = self._open(protocol.message_item(iid, [], protocol.IN_PROGRESS), out)
            empty.parts["content"] = 0
            empty.item["content"].append(protocol.text_part(""))
            self._emit(out, "response.content_part.added", item_id=iid,
                       output_index=empty.index, content_index=0,
                       part=protocol.text_part(""))
        reason = protocol.incomplete_reason(result.get("finish_reason"))
        status = protocol.INCOMPLETE if reason is not None else protocol.COMPLETED
        self._end(status, out, usage=protocol.usage(result.get("usage")),
                  incomplete_reason=reason, completed_at=completed_at)

    def _end(self, status: str, out: list[dict[str, Any]], *, completed_at: int | None,
             **extra: Any) -> None:
        out += self._begin()
        finished = status in (protocol.COMPLETED, protocol.INCOMPLETE)
        last = protocol.COMPLETED if status == protocol.COMPLETED else protocol.INCOMPLETE
        if not finished:
            for item in [i for i in self.items if not i.closed]:
                self._close(item, out, protocol.INCOMPLETE)
        else:
            self._close_all(out, last)
        self.ended = True
        self._emit(out, protocol.END_EVENT[status],
                   response=self.response(status, completed_at=completed_at, **extra))

    def _error_event(self, code: str, message: str) -> dict[str, Any]:
        self.ended = True
        event = {"type": "error", "sequence_number": self.seq, "code": code,
                 "message": message, "param": None}
        self.seq += 1
        return event


def encode(event: dict[str, Any]) -> bytes:
    """One event as Server-Sent Events, as OpenAI sends them (``event:`` names its type)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A snapshot: items keep growing after the event that shows them was made."""
    copied: dict[str, Any] = orjson.loads(orjson.dumps(obj))
    return copied


def seconds(iso: Any) -> int | None:
    """An ISO 8601 time (a task view's ``completed_at``) in epoch seconds."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None
