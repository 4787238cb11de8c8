"""Deterministic answer text.

The same messages always produce the same words (unless `metadata.mock.vary` asks for other
words on every call, as a real provider's retry gives), so tests can assert exact output and
benchmarks compare like with like. Words are picked from SHAKE-128 output keyed by a hash
of the prompt: it is fast, needs no RNG state, and because SHAKE is an extendable-output
function a shorter answer is always a prefix of a longer one (max_tokens truncation and
"cut after N tokens" faults therefore yield prefixes of the full answer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# 64 words each, so one output byte masked with 63 picks a word without bias.
CONTENT_VOCAB: tuple[str, ...] = (
    "the", "queue", "drains", "steadily", "while", "workers", "stream", "tokens",
    "back", "to", "callers", "without", "blocking", "requests", "a", "pipeline",
    "keeps", "latency", "low", "and", "throughput", "high", "each", "task",
    "moves", "through", "redis", "with", "retries", "when", "providers", "fail",
    "results", "arrive", "in", "order", "so", "clients", "can", "resume",
    "after", "disconnects", "mock", "answers", "are", "deterministic", "for",
    "tests", "benchmarks", "measure", "real", "behaviour", "under", "load",
    "every", "chunk", "carries", "one", "word", "of", "output", "from", "this", "model",
)  # fmt: skip
REASONING_VOCAB: tuple[str, ...] = (
    "first", "consider", "the", "question", "then", "check", "assumptions",
    "maybe", "wait", "let", "me", "think", "about", "edge", "cases", "carefully",
    "so", "answer", "should", "be", "short", "clear", "and", "correct", "hmm",
    "okay", "recall", "what", "user", "asked", "verify", "each", "step", "again",
    "that", "seems", "right", "now", "draft", "reply", "compare", "options",
    "pick", "simplest", "one", "explain", "why", "it", "works", "here", "also",
    "note", "limits", "of", "approach", "good", "plan", "is", "ready", "to",
    "write", "final", "response", "done",
)  # fmt: skip
assert len(CONTENT_VOCAB) == 64 and len(REASONING_VOCAB) == 64

# Domain separation so reasoning and content are independent streams: changing the
# reasoning length must not change the content words.
_CONTENT_DOMAIN = b"mockai/content\x00"
_REASONING_DOMAIN = b"mockai/reasoning\x00"


class PromptError(ValueError):
    """The messages array is malformed; the message is safe to return to the client."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the mock keeps of a prompt: a digest and a word count, never the text."""

    seed: bytes
    words: int


def _content_text(index: int, content: Any) -> str:
    if content is None:  # e.g. an assistant message that only carries tool calls
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # OpenAI content parts: only text parts contribute (images etc. are ignored).
        parts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts)
    raise PromptError(f"messages[{index}].content must be a string, an array or null")


def digest_prompt(messages: Sequence[Any]) -> Prompt:
    """Hash role+text of every message and count whitespace-separated words."""
    h = hashlib.blake2b(digest_size=16)
    words = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise PromptError(f"messages[{i}] must be an object")
        role = msg.get("role")
        if not isinstance(role, str):
            raise PromptError(f"messages[{i}].role must be a string")
        text = _content_text(i, msg.get("content"))
        words += len(text.split())
        # Length-prefixing keeps ("ab","c") and ("a","bc") from colliding.
        for part in (role.encode(), text.encode("utf-8", "surrogatepass")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return Prompt(seed=h.digest(), words=words)


# Every token but the first carries its leading space, like real BPE tokens. Interned
# up front so a token is a shared object (cheap, and usable as a dict key for the
# pre-serialized JSON fragments in protocol.py).
_CONTENT_SPACED = tuple(" " + w for w in CONTENT_VOCAB)
_REASONING_SPACED = tuple(" " + w for w in REASONING_VOCAB)
ALL_CONTENT_TOKENS: frozenset[str] = frozenset(CONTENT_VOCAB + _CONTENT_SPACED)
ALL_REASONING_TOKENS: frozenset[str] = frozenset(REASONING_VOCAB + _REASONING_SPACED)


def _pick(
    vocab: tuple[str, ...], spaced: tuple[str, ...], domain: bytes, seed: bytes, n: int
) -> tuple[str, ...]:
    if n <= 0:
        return ()
    picks = hashlib.shake_128(domain + seed).digest(n)
    return (vocab[picks[0] & 63], *[spaced[b & 63] for b in picks[1:]])


def content_tokens(seed: bytes, n: int) -> tuple[str, ...]:
    return _pick(CONTENT_VOCAB, _CONTENT_SPACED, _CONTENT_DOMAIN, seed, n)


def reasoning_tokens(seed: bytes, n: int) -> tuple[str, ...]:
    return _pick(REASONING_VOCAB, _REASONING_SPACED, _REASONING_DOMAIN, seed, n)
