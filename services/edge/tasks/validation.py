"""Turning a request body into a task request, or a clear 4xx naming what is wrong.

Forward by default: what reaches the provider is the client's body, less only what Sluice owns
(``deadline``, ``priority``, ``provider_options``; ``metadata`` unless AI_FORWARD_METADATA),
with ``model`` filled in, every other member passed through unchanged and in its own name (the
processor builds the provider's body: ``services.processor.provider.request_body``).

What Sluice checks is the request model (:mod:`services.edge.tasks.protocol`), which the
OpenAPI document is made from too: the body is converted to it (``msgspec.convert``, which
only reads the body), and an error is named as the client wrote the member (``field`` on
/api/tasks, OpenAI's ``param`` on /v1: ``messages[0].role``). Checked here besides: the
messages' characters in all (every string in a message counts, members the model does not
name too), the model a request names (404 on /v1, as OpenAI answers), the deadline as a time,
and the priority header.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from services.edge.plumbing.errors import ApiError
from services.edge.settings import EdgeSettings
from services.edge.tasks import protocol
from services.edge.tasks.protocol import FLEX_PRIORITY, PRIORITY_MAX, PRIORITY_MIN
from shared import deadlines
from shared.providers import MAX_MODEL_CHARS, valid_model_name
from shared.timeutil import now_ms

__all__ = ["FLEX_PRIORITY", "PRIORITY_HEADER", "Submission", "parse_task"]

PRIORITY_HEADER = "X-Sluice-Priority"  # /v1: for clients that cannot add a body field
PRIORITY_HEADER_PATTERN = "^ *-?(1000|[0-9]{1,3}) *$"  # the same in the OpenAPI document
PRIORITY_HEADER_VALUE = re.compile(PRIORITY_HEADER_PATTERN)


class Submission(msgspec.Struct, frozen=True):
    """What the task stores as its request (``payload``: the client's body with ``model``
    filled in, ``prompt`` turned into ``messages`` and the priority a header or service tier
    gave), the model it names, its explicit deadline (epoch ms), and how /v1 answers it. (A
    Struct: made on every submit, in a tenth of a frozen dataclass's time.)"""

    payload: dict[str, Any]
    model: str
    deadline_at: int | None = None
    priority: int = 0
    stream: bool = False
    include_usage: bool = False


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}", param=field)


def parse_task(body: Any, settings: EdgeSettings, *, openai: bool = False,
               priority_header: str | None = None) -> Submission:
    """The task ``body`` asks for. ``body`` becomes the stored request (it is the caller's
    parsed JSON, used in place: no copy on the submit path)."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    models = protocol.models(settings)
    try:
        req: Any = msgspec.convert(body, models.chat if openai else models.task)
    except msgspec.ValidationError as exc:
        raise _named(exc, body, settings, openai) from None
    if req.messages is not msgspec.UNSET:
        _count_text(body["messages"], settings.max_text_chars)
    if not openai and req.prompt is not msgspec.UNSET:
        body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
    model = body["model"] = req.model or settings.provider.ai_model
    deadline_at = None
    if req.deadline is not None:
        try:
            deadline_at = deadlines.parse(body["deadline"], now_ms())
        except deadlines.DeadlineError as exc:
            raise _invalid("deadline", str(exc)) from None
        # Kept as given (seconds count from the submit time the task hash records), so an
        # idempotent replay of the same body hashes the same.
    priority = _priority(req, openai, priority_header)
    if priority is not None:
        body["priority"] = priority  # ours, like deadline: the processor keeps it to itself
    options = req.stream_options
    return Submission(payload=body, model=model, deadline_at=deadline_at,
                      priority=priority or 0, stream=bool(req.stream),
                      include_usage=bool(options and options.include_usage))


def _count_text(messages: list[dict[str, Any]], most: int) -> None:
    """The messages' characters in all (MAX_TEXT_CHARS): every string in a message (keys
    too), but its role."""
    total = 0
    for msg in messages:
        if len(msg) == 2 and type(msg.get("content")) is str:
            total += len(msg["content"])  # the common message, {"role", "content": "..."}
        else:
            total += _chars(msg) - len(msg["role"])
        if total > most:
            raise _invalid("messages", f"more than {most} characters in all")


def _chars(value: Any) -> int:
    """Characters of every string in ``value`` (keys too), iteratively: it may nest deep."""
    total, stack = 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, dict):
            total += sum(len(k) for k in node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return total


def _priority(req: Any, openai: bool, header: str | None) -> int | None:
    """The body's ``priority``; on /v1 failing that the priority header, then
    ``service_tier: "flex"`` (a low priority). None: not asked for."""
    # A bad header is refused even when the body's field wins: nothing malformed is ignored.
    if openai and header is not None and not PRIORITY_HEADER_VALUE.match(header.strip()):
        raise ApiError(422, "invalid_request", f"{PRIORITY_HEADER}: must be an integer "
                       f"from {PRIORITY_MIN} to {PRIORITY_MAX}", param=PRIORITY_HEADER)
    if req.priority is not None:
        return int(req.priority)
    if not openai:
        return None
    if header is not None:
        return int(header)
    return FLEX_PRIORITY if req.service_tier == "flex" else None


# msgspec names Python's types; the client wrote JSON.
_JSON_WORDS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
               "datetime": "RFC 3339 time"}
_PYTHON_WORD = re.compile(r"\b(" + "|".join(_JSON_WORDS) + r")\b")
_QUOTED = re.compile(r"`[^`]*`")
_WHOLE = re.compile(r"(-?\d+)\.0\b")  # 1000.0: a bound of an integer, said as written


def _json_words(text: str) -> str:
    text = text.replace("`float` that's a multiple of 1.0", "`integer`")  # protocol.integer
    text = _QUOTED.sub(lambda m: _PYTHON_WORD.sub(lambda w: _JSON_WORDS[w[0]], m[0]), text)
    return _WHOLE.sub(r"\1", text)


_ECHOED = re.compile(r"^(Invalid (?:enum |tag )?value) .*$", re.S)


def _named(exc: msgspec.ValidationError, body: dict[str, Any], settings: EdgeSettings,
           openai: bool) -> ApiError:
    """msgspec's error (``Expected `int`, got `str` - at `$.messages[0].role```) as ours,
    naming the member as the client wrote it (``messages[0].role``)."""
    text, _, at = str(exc).rpartition(" - at `")
    if not text:  # at the body itself
        text, at = str(exc), "$`"
    path = at[:-1].removeprefix("$").removeprefix(".")
    # msgspec quotes the value it refused ("Invalid enum value 'x'"): a client's text (its
    # prompt, put in the wrong field) never comes back in an error, nor reaches a log through one.
    text = _ECHOED.sub(r"\1: not one of the values allowed here", text)
    cause = exc.__cause__
    if isinstance(cause, protocol.Invalid):  # a rule of the model (a __post_init__)
        path, text = _join(path, cause.member), cause.message
    elif text.startswith("Object missing required field `"):
        path, text = _join(path, text.split("`")[1]), "required"
    elif text.startswith("Object contains unknown field `"):
        path = _join(path, text.split("`")[1])
        text = "unknown field (a provider's own parameter goes in provider_options)"
    if path == "model":
        return _model_error(body.get("model"), settings, openai)
    if not path:
        return ApiError(422, "invalid_request", _json_words(text))
    return _invalid(path, _json_words(text))


def _join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


def _model_error(model: Any, settings: EdgeSettings, openai: bool) -> ApiError:
    if not isinstance(model, str) or not valid_model_name(model):
        return _invalid("model", f"must be a string of 1 to {MAX_MODEL_CHARS} characters, "
                                 "none of them a control character")
    if openai:  # OpenAI's answer, word for word, so SDKs raise their NotFoundError
        return ApiError(404, "model_not_found", f"The model `{model}` does not exist or you "
                        "do not have access to it.", param="model",
                        openai_type="invalid_request_error")
    return ApiError(422, "model_not_found", f"model: {model!r} is not served here "
                    "(GET /v1/models lists the models)", param="model")
