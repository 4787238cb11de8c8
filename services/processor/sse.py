"""Strict, incremental ``text/event-stream`` decoder (WHATWG HTML, "Server-sent events").

Pure logic, no I/O: the HTTP layer hands over whatever bytes a network read returned and gets
back the events those bytes completed. Chunk boundaries carry no meaning, so a read may end
inside a line, between a CR and its LF, inside a multi-byte UTF-8 character or right after
``data:``; feeding a body byte by byte gives the same events as feeding it whole.

Work is done per *block of complete lines*, not per byte: the new chunk is searched once for its
last line terminator, the completed text is decoded once and split with a regex on CR/LF.
``str.splitlines()`` is deliberately not used: it also splits on U+2028, U+2029, U+0085, VT, FF
and \\x1c-\\x1e, which may appear raw inside JSON strings (see corpus file 16).

A block in the shape nearly every provider sends (whole events of one ``data:`` line each, LF
terminators, nothing of an event pending) takes a byte-level fast path: one ``split`` and a
prefix check per event, no per-line parsing. Anything else in a block (CR, comments, other
fields, multi-line data, an event cut between reads) sends the whole block down the strict path,
so the fast path only ever gives what the strict one would; ``SSEDecoder(fast=False)`` is the
strict decoder alone, which the tests hold the fast one to, corpus file by corpus file.

Two departures from the spec, both about hostile or broken servers: a line longer than
``max_line_bytes`` raises :class:`SSELineTooLong` instead of being buffered without limit, and a
field named ``error`` (not an SSE field; the spec says ignore it) is kept on the event, because
some servers put their only word of failure there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_LINE_BYTES", "SSEDecoder", "SSEEvent", "SSELineTooLong"]

_BOM = b"\xef\xbb\xbf"
# The only line terminators of the format. CRLF comes first so it counts as one terminator.
_LINE_END = re.compile(r"\r\n|\r|\n")
_LINE_END_BYTES = re.compile(rb"\r\n|\r|\n")
# One chunk's JSON is a few hundred bytes; 1 MiB leaves room for any honest line (a huge
# tool-call argument sent whole) and stops a server streaming one endless line from filling
# memory (190 MB in 10 s was measured).
MAX_LINE_BYTES = 1 << 20


class SSELineTooLong(ValueError):
    """A line grew past the decoder's ``max_line_bytes`` without a terminator."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an SSE line exceeded {limit} bytes")
        self.limit = limit


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event.

    ``id`` is the *last event ID* at dispatch time: it persists across events until an ``id``
    field changes it, as the spec says. ``retry`` is the reconnection time given by a valid
    ``retry`` field inside this event's block, else None (the stream-wide value is
    ``SSEDecoder.retry``). ``error`` joins the values of non-standard ``error`` fields, else
    None; an event is dispatched when it has data or such an error.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    error: str | None = None


class SSEDecoder:
    """Feed raw bytes with :meth:`feed`, call :meth:`close` at EOF.

    ``last_event_id`` and ``retry`` expose the stream-level state (the values a reconnecting
    client would use); they survive :meth:`close`.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_error",
        "_event_retry",
        "_event_type",
        "_fast",
        "_pending",
        "_skip_lf",
        "last_event_id",
        "max_line_bytes",
        "retry",
    )

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES, *, fast: bool = True) -> None:
        self.max_line_bytes = max_line_bytes
        self._fast = fast
        self.last_event_id: str | None = None
        self.retry: int | None = None
        # Bytes of the current, unterminated line. It never holds a CR or LF: everything up to
        # the last terminator of each chunk is consumed at once.
        self._pending = bytearray()
        # The previous chunk ended with CR: an LF opening the next chunk belongs to that CR.
        self._skip_lf = False
        # Nothing after a possible BOM has been seen yet.
        self._at_start = True
        self._data: list[str] = []
        self._error: list[str] = []
        self._event_type = ""
        self._event_retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume one network read; return the events it completed, in order.

        Raises :class:`SSELineTooLong` once a line passes ``max_line_bytes``.
        """
        got = self.feed_data(chunk)
        last_id = self.last_event_id  # the fast path's events change no field but data
        # Per event rather than the block at once: the same text, as an event boundary is
        # ASCII and never inside a UTF-8 sequence.
        return [e if isinstance(e, SSEEvent)
                else SSEEvent(e.decode("utf-8", "replace"), "message", last_id) for e in got]

    def feed_data(self, chunk: bytes) -> Sequence[SSEEvent | bytes]:
        """:meth:`feed`, but an event of the common shape (one ``data`` line, nothing else)
        comes as its data's raw bytes, for a consumer that parses them itself (the assembler's
        ``add_data``): no string or event object per chunk. Only the fast path gives bytes."""
        block = self._block(chunk)
        if block is None:
            return []
        if self._fast:
            values = self._fast_values(block)
            if values is not None:
                return values
        return self._process_block(block)

    def _block(self, chunk: bytes) -> bytes | None:
        """The complete lines this read ends (with what was pending before them), or None."""
        if self._at_start:
            chunk = self._strip_bom(chunk)
        if not chunk:
            return None
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return None
        # rfind twice (C speed) beats scanning the chunk in Python; the buffered part holds no
        # terminator, so only the new chunk needs searching.
        last = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if last < 0:
            self._pending += chunk
            self._check_pending()
            return None
        if self._pending:
            block = bytes(self._pending) + chunk[: last + 1]
            self._pending.clear()
        else:
            block = chunk[: last + 1]
        if len(block) > self.max_line_bytes:
            self._check_block(block)
        self._pending += chunk[last + 1 :]
        self._check_pending()
        self._skip_lf = chunk[last] == 0x0D and last == len(chunk) - 1
        return block

    def close(self) -> list[SSEEvent]:
        """End of stream. A strict parser discards an unterminated line and event: returns []."""
        self._pending.clear()
        self._skip_lf = False
        self._at_start = True
        self._reset_event()
        return []

    # --- internals -----------------------------------------------------------------------------
    def _check_pending(self) -> None:
        # The unterminated tail is one partial line: its length alone decides.
        if len(self._pending) > self.max_line_bytes:
            self._pending.clear()
            raise SSELineTooLong(self.max_line_bytes)

    def _check_block(self, block: bytes) -> None:
        """Only for a block longer than the cap (rare: network reads are far smaller), so
        splitting it once more costs nothing on the usual path."""
        if max(map(len, _LINE_END_BYTES.split(block))) > self.max_line_bytes:
            raise SSELineTooLong(self.max_line_bytes)

    def _strip_bom(self, chunk: bytes) -> bytes:
        """Drop one UTF-8 BOM at the very start, even when it arrives split over reads."""
        head = bytes(self._pending) + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            # Could still become a BOM: wait for more bytes before deciding.
            self._pending = bytearray(head)
            return b""
        self._at_start = False
        self._pending.clear()
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _fast_values(self, block: bytes) -> list[bytes] | None:
        """The data of each event of a block of whole ``data: ...\n\n`` events, each of one
        line, with no event of an earlier block pending; None for any other block (the strict
        path then reads it). Equal to the strict path's result: one data line, no other field,
        is an event of that data, type "message", the last event ID, no retry, no error."""
        if (self._data or self._error or self._event_type or self._event_retry is not None
                or not block.endswith(b"\n\n") or b"\r" in block):
            return None
        values: list[bytes] = []
        for part in block[:-2].split(b"\n\n"):
            # Not "data:", or more than one line (another field, a comment, multi-line data, a
            # blank line more): the strict path, for the whole block.
            if not part.startswith(b"data:") or b"\n" in part:
                return None
            values.append(part[6:] if part[5:6] == b" " else part[5:])
        return values

    def _process_block(self, block: bytes) -> list[SSEEvent]:
        # Decoding the whole block at once is safe: it ends on a terminator, and CR/LF bytes never
        # occur inside a multi-byte UTF-8 sequence. Invalid bytes become U+FFFD, as the spec says.
        lines = _LINE_END.split(block.decode("utf-8", "replace"))
        lines.pop()  # the empty string after the block's final terminator
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            elif line[0] != ":":  # a leading colon marks a comment (keep-alives)
                self._process_field(line)
        return events

    def _process_field(self, line: str) -> None:
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            # isdigit() alone accepts non-ASCII digits such as "²"; the spec wants ASCII only.
            if value.isascii() and value.isdigit():
                self.retry = self._event_retry = int(value)
        elif name == "error":
            self._error.append(value)  # not SSE, but a server's report of failure: keep it
        # Any other field name is ignored, as the spec requires.

    def _dispatch(self) -> SSEEvent | None:
        # An event is dispatched only if at least one data (or error) line was seen; a block of
        # only "event:"/"retry:" lines dispatches nothing but still resets the event type.
        event = None
        if self._data or self._error:
            event = SSEEvent(
                data="\n".join(self._data),
                event=self._event_type or "message",
                id=self.last_event_id,
                retry=self._event_retry,
                error="\n".join(self._error) if self._error else None,
            )
        self._reset_event()
        return event

    def _reset_event(self) -> None:
        self._data = []
        if self._error:  # almost always empty: no new list per event
            self._error = []
        self._event_type = ""
        self._event_retry = None
