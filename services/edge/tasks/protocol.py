"""The request bodies of ``POST /api/tasks`` and ``POST /v1/chat/completions``: one model, the
one source of both their validation (:mod:`services.edge.tasks.validation` converts a body to
it) and their OpenAPI schema (:func:`components`, from ``msgspec.json.schema_components``).
A limit is written once, here, or in the settings it comes from.

The two bodies share everything but two points, each said in the model: ``/api/tasks`` also
takes ``prompt`` (``messages`` then optional) and refuses a member it does not know (a typo
never silently changes what is sent: ``forbid_unknown_fields``); ``/v1/chat/completions``
keeps unknown members, as the SDKs' ``extra_body`` sends them. Converting a body to the model
only reads it: what is forwarded and stored is the client's own JSON, every member as given.

Limits that come from the settings (MAX_MESSAGES, MAX_TEXT_CHARS, MAX_TOKENS_LIMIT,
MAX_METADATA_BYTES, AI_MODELS) cannot live in a static class: :func:`models` builds the
classes for one edge's settings (at app creation, then cached), with those values in their
``Meta``, so the edge's validation and the document it serves state the same numbers. (The
other way, a static model whose schema is patched with the settings' values afterwards, would
validate with one number and document another.)

What msgspec cannot say by types (a rule across members: a text part has text; an
assistant's content may be null only beside tool calls; ``prompt`` or ``messages``; the size
and depth of ``metadata``) is a ``__post_init__`` check, and the JSON Schema of the same rule is
the class's ``rules``, next to it, merged into its schema by :func:`components`.

No ``from __future__ import annotations`` here: the classes built in :func:`models` name
local types (the settings' limits) in their annotations, which must be evaluated there.
"""

import functools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import orjson
from msgspec import UNSET, Meta, Struct, UnsetType

from services.edge.plumbing.bodies import INT_MAX, INT_MIN
from services.edge.settings import EdgeSettings
from shared.deadlines import MAX_DEADLINE_S

Schema = dict[str, Any]
REF = "#/components/schemas/"

MAX_N = 128
MAX_TOOL_CALLS = 128
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 64
MAX_STOP_CHARS, MAX_STOPS = 256, 4
# ``priority``: lower runs sooner (vLLM's and LiteLLM's convention), 0 by default; each step is
# worth PRIORITY_AGING_S of waiting, so a low priority delays a task but never starves it.
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
FLEX_PRIORITY = 10  # /v1's service_tier "flex": cheaper, slower, later
# What provider_options may not set: what Sluice decides for every call.
PROVIDER_OPTIONS_RESERVED = ("messages", "model", "stream", "stream_options")
# orjson writes at most 255 levels: deeper metadata would be a 500 when stored.
MAX_METADATA_DEPTH = 64
# OpenAI's documented Chat Completions members that Sluice forwards without reading them: the
# provider checks them (its refusal comes back as its own 400).
FORWARDED = ("audio", "frequency_penalty", "function_call", "functions", "logit_bias",
             "logprobs", "modalities", "parallel_tool_calls", "prediction", "presence_penalty",
             "prompt_cache_key", "prompt_cache_retention", "reasoning_effort",
             "response_format", "safety_identifier", "seed", "store", "tool_choice", "tools",
             "top_logprobs", "user", "verbosity", "web_search_options")


class Invalid(ValueError):
    """A rule of :attr:`rules` broken, raised in ``__post_init__``: msgspec reports it at the
    object's path, and :func:`services.edge.tasks.validation.parse_task` names the member
    (``member`` below it: ``messages[1]`` + ``content``)."""

    def __init__(self, member: str, message: str) -> None:
        super().__init__(f"{member}: {message}")
        self.member, self.message = member, message


def integer(lo: int, hi: int, description: str | None = None) -> Any:
    """An integer from ``lo`` to ``hi``. JSON Schema counts 8.0 as an integer, and so does
    Sluice; msgspec's ``int`` refuses 8.0, so it is a float that is a multiple of 1 (the
    document says ``integer``: :func:`components`)."""
    return Annotated[float, Meta(ge=lo, le=hi, multiple_of=1, description=description)]


def _null_only(description: str) -> Any:
    return Annotated[None, Meta(description=description)]


# --- messages -----------------------------------------------------------------------------------
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
CallId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]


class Function(Struct):
    name: Name
    arguments: Annotated[str, Meta(description="JSON text")]


class FunctionToolCall(Struct, tag_field="type", tag="function"):
    """A call of a function tool, every member forwarded as given."""

    id: CallId
    function: Function


class CustomToolCall(Struct, tag_field="type", tag="custom"):
    """A call of a custom tool, every member forwarded as given."""

    id: CallId


ToolCalls = Annotated[list[FunctionToolCall | CustomToolCall],
                      Meta(min_length=1, max_length=MAX_TOOL_CALLS)]


class Part(Struct):
    """A content part of any type (text, image_url, input_audio, file, ...), forwarded as
    given: an object naming its type; a text part's text is a string."""

    rules: ClassVar[Schema] = {
        "required": ["type"], "properties": {"type": {"type": "string"}},
        "anyOf": [{"required": ["text"], "properties": {"type": {"const": "text"},
                                                        "text": {"type": "string"}}},
                  {"properties": {"type": {"not": {"const": "text"}}}}]}
    type: Any = UNSET
    text: Any = UNSET

    def __post_init__(self) -> None:
        if not isinstance(self.type, str):  # the part itself is named, as for a non-object
            raise ValueError("must be an object with a string type")
        if self.type == "text" and not isinstance(self.text, str):
            raise Invalid("text", "must be a string")


# An assistant message's members, any one of which makes its content optional.
_ANSWERS = ("tool_calls", "function_call", "refusal", "audio")


@dataclass(frozen=True, slots=True)
class Models:
    """The request models of one edge's settings."""

    task: type[Struct]  # POST /api/tasks
    chat: type[Struct]  # POST /v1/chat/completions (and Batch API lines, and /v1/responses)
    rules: tuple[type[Struct], ...]  # every class with ``rules``


def _metadata_errors(metadata: dict[str, Any], max_bytes: int) -> None:
    """Metadata nests at most ``MAX_METADATA_DEPTH`` deep, each of its numbers lies within
    64-bit integers' range (a wider integer read as a float by orjson is caught here, or,
    where rounding brings it back in range, by ``bodies.loads``), and it takes at most
    ``max_bytes`` as JSON. Iterative: what arrives may nest 1,000 deep."""
    stack: list[tuple[Any, int, str]] = [(metadata, 1, "metadata")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise Invalid("metadata", f"nested deeper than {MAX_METADATA_DEPTH} levels")
            items = (node.items() if isinstance(node, dict)
                     else ((f"[{i}]", v) for i, v in enumerate(node)))
            for key, item in items:
                where = f"{path}{key}" if isinstance(node, list) else f"{path}.{key}"
                stack.append((item, depth + 1, where))
        elif isinstance(node, float) and not INT_MIN <= node <= INT_MAX:
            raise Invalid(path, f"a number beyond 64-bit integers' range ({INT_MIN} to "
                                f"{INT_MAX})")
    if len(orjson.dumps(metadata)) > max_bytes:
        raise Invalid("metadata", f"larger than {max_bytes} bytes as JSON")


# Numbers within 64-bit integers' range: a wider integer would not be kept exactly. msgspec
# cannot type a recursive value before Python 3.12, so this one is said as JSON Schema, and
# checked by ``_metadata_errors``.
METADATA_VALUE: Schema = {"anyOf": [
    {"type": ["string", "boolean", "null"]},
    {"type": "number", "minimum": INT_MIN, "maximum": INT_MAX},
    {"type": "array", "items": {"$ref": REF + "MetadataValue"}},
    {"type": "object", "additionalProperties": {"$ref": REF + "MetadataValue"}}]}


@dataclass(frozen=True, slots=True)
class Limits:
    """What of the settings the models state."""

    max_messages: int
    max_text_chars: int
    max_tokens: int
    max_metadata_bytes: int
    models: tuple[str, ...]
    default_model: str

    @classmethod
    def of(cls, s: EdgeSettings) -> "Limits":
        return cls(s.max_messages, s.max_text_chars, s.max_tokens_limit, s.max_metadata_bytes,
                   s.models, s.provider.ai_model)


_BY_SETTINGS: dict[int, tuple[EdgeSettings, Models]] = {}


def models(settings: EdgeSettings) -> Models:
    """The models of these settings (built once per settings object, and once per limits)."""
    hit = _BY_SETTINGS.get(id(settings))
    if hit is not None and hit[0] is settings:
        return hit[1]
    built = _build(Limits.of(settings))
    if len(_BY_SETTINGS) >= 64:  # tests make many settings; an edge has one
        _BY_SETTINGS.clear()
    _BY_SETTINGS[id(settings)] = (settings, built)
    return built


@functools.lru_cache(maxsize=16)
def _build(limits: Limits) -> Models:
    text = limits.max_text_chars
    # No maxLength of its own: a message's strings count towards MAX_TEXT_CHARS in all, which
    # validation counts (every string of every message: members the model does not name too).
    Content = str | Annotated[list[Part], Meta(min_length=1)]
    not_tool = "only a tool message has tool_call_id"
    not_assistant = "only an assistant message has tool_calls"

    class Message(Struct, tag_field="role", kw_only=True):
        """OpenAI's message. Every member is forwarded as given (reasoning_content, refusal,
        DeepSeek's prefix...); these are the ones Sluice checks."""

        name: Name | None = None

    class SystemMessage(Message, tag="system"):
        content: Content
        tool_calls: _null_only(not_assistant) = None
        tool_call_id: _null_only(not_tool) = None

    class DeveloperMessage(SystemMessage, tag="developer"):
        pass

    class UserMessage(SystemMessage, tag="user"):
        pass

    class FunctionMessage(SystemMessage, tag="function"):
        pass

    class ToolMessage(Message, tag="tool"):
        """A tool's answer, naming the call it answers."""

        content: Content
        tool_call_id: CallId
        tool_calls: _null_only(not_assistant) = None

    class AssistantMessage(Message, tag="assistant"):
        """An assistant's turn: its content may be null beside tool calls (or a function
        call, a refusal, audio)."""

        rules: ClassVar[Schema] = {"anyOf": [
            {"required": [member], "properties": {member: {"not": {"type": "null"}}}}
            for member in ("content", *_ANSWERS)]}
        content: Content | None = None
        tool_calls: ToolCalls | None = None
        tool_call_id: _null_only(not_tool) = None
        function_call: Any = None
        refusal: Any = None
        audio: Any = None

        def __post_init__(self) -> None:
            if self.content is None and all(getattr(self, m) is None for m in _ANSWERS):
                raise Invalid("content", "must be a string or an array of parts (null only "
                                         "in an assistant message with tool_calls)")

    Messages = Annotated[
        list[SystemMessage | DeveloperMessage | UserMessage | FunctionMessage | ToolMessage
             | AssistantMessage],
        Meta(min_length=1, max_length=limits.max_messages,
             description=f"at most {text} characters of text in all")]
    Model = Annotated[Literal[limits.models],  # type: ignore[name-defined]
                      Meta(description=f"one of AI_MODELS; default: {limits.default_model}. "
                                       "Another: model_not_found (404 on /v1, else 422)")]
    Tokens = integer(1, limits.max_tokens)
    Stop = Annotated[str, Meta(min_length=1, max_length=MAX_STOP_CHARS)]
    max_metadata_bytes = limits.max_metadata_bytes

    class StreamOptions(Struct):
        include_usage: bool | None = None

    class Request(Struct, kw_only=True):
        """The members Sluice reads, both routes'; the others are forwarded as given."""

        model: Model | None = None
        max_tokens: Tokens | None = None
        max_completion_tokens: Tokens | None = None
        temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
        top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
        stop: Stop | Annotated[list[Stop], Meta(min_length=1, max_length=MAX_STOPS)] | None = None
        n: integer(1, MAX_N, "every choice is relayed and stored") | None = None
        stream: bool | None = None
        stream_options: StreamOptions | None = None
        service_tier: Annotated[str, Meta(description=(
            f'"flex": priority {FLEX_PRIORITY} unless a priority is given (/v1). '
            "Forwarded"))] | None = None
        metadata: Annotated[dict[str, Any], Meta(
            extra_json_schema={"additionalProperties": {"$ref": REF + "MetadataValue"}},
            description=f"yours, returned with the task; at most {max_metadata_bytes} bytes as "
                        f"JSON, nested at most {MAX_METADATA_DEPTH} levels, integers within "
                        "64 bits")] | None = None
        deadline: (Annotated[float, Meta(gt=0, le=MAX_DEADLINE_S)]
                   | Annotated[datetime, Meta(tz=True)]
                   | None) = None
        priority: integer(
            PRIORITY_MIN, PRIORITY_MAX,
            "lower runs sooner within your own tasks (default 0); each step is worth the "
            "coordinators' PRIORITY_AGING_S of waiting, so a high number delays a task but "
            "never starves it. Not sent to the provider") | None = None
        provider_options: Annotated[dict[str, Any], Meta(
            extra_json_schema={"propertyNames": {"not": {"enum": list(
                PROVIDER_OPTIONS_RESERVED)}}},
            description="merged into the provider's request: a provider's own parameters "
                        "(top_k, enable_thinking, ...); may not set "
                        f"{', '.join(PROVIDER_OPTIONS_RESERVED)}. Not sent as itself")
                                    ] | None = None

        def __post_init__(self) -> None:
            if self.metadata is not None:
                _metadata_errors(self.metadata, max_metadata_bytes)
            if self.provider_options is not None:
                for member in PROVIDER_OPTIONS_RESERVED:
                    if member in self.provider_options:
                        raise Invalid(f"provider_options.{member}",
                                      "is Sluice's to set, not an option")

    forwarded = {name: (name, Annotated[Any, Meta(
        description="forwarded to the provider as given")], UNSET) for name in FORWARDED}
    Chat = msgspec.defstruct("Chat", list(forwarded.values()), bases=(Request,), kw_only=True)

    class ChatCompletionRequest(Chat):  # type: ignore[misc]
        """Forwarded to the provider as given, less deadline, priority and provider_options
        (merged in); other members (a provider's own, as the SDKs' extra_body sends them)
        are forwarded too."""

        messages: Messages

    class TaskRequest(Chat, forbid_unknown_fields=True):  # type: ignore[misc,call-arg]
        """Every documented Chat Completions field, forwarded to the provider as given, and
        Sluice's own (prompt, deadline, priority, provider_options). Other fields are refused
        (422), so a typo never silently changes what is sent: a provider's own parameters go
        in provider_options."""

        rules: ClassVar[Schema] = {"oneOf": [{"required": ["messages"]},
                                             {"required": ["prompt"]}]}
        messages: Messages | UnsetType = UNSET
        prompt: Annotated[str, Meta(min_length=1, max_length=text,
                                    description="shorthand for one user message")
                          ] | UnsetType = UNSET

        def __post_init__(self) -> None:
            if self.messages is UNSET and self.prompt is UNSET:
                raise Invalid("messages", "required (or give a prompt)")
            if self.messages is not UNSET and self.prompt is not UNSET:
                raise Invalid("prompt", "give either messages or prompt, not both")
            Request.__post_init__(self)

    return Models(task=TaskRequest, chat=ChatCompletionRequest,
                  rules=(Part, AssistantMessage, TaskRequest))


# --- the OpenAPI schema -------------------------------------------------------------------------

def components(settings: EdgeSettings) -> dict[str, Schema]:
    """The schemas of both request bodies and of everything they name (``TaskRequest``,
    ``ChatCompletionRequest``, the messages...), as OpenAPI 3.1 components: msgspec's JSON
    Schema (2020-12, OpenAPI 3.1's own dialect) with refs into ``#/components/schemas/``,
    each class's ``rules`` merged in, and Sluice's integers said as ``integer``."""
    m = models(settings)
    _, schemas = msgspec.json.schema_components([m.task, m.chat], ref_template=REF + "{name}")
    for cls in m.rules:
        schemas[cls.__name__].update(cls.rules)  # type: ignore[attr-defined]
    schemas["MetadataValue"] = METADATA_VALUE
    return {name: _integers(schema) for name, schema in schemas.items()}


def _integers(node: Any) -> Any:
    """``{"type": "number", "multipleOf": 1}`` (:func:`integer`) as ``{"type": "integer"}``,
    the same set of numbers in JSON Schema's words."""
    if isinstance(node, list):
        return [_integers(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _integers(value) for key, value in node.items()}
    if out.get("type") == "number" and out.get("multipleOf") == 1:
        del out["multipleOf"]
        out["type"] = "integer"
        for key in ("minimum", "maximum"):
            if isinstance(out.get(key), float) and math.isfinite(out[key]):
                out[key] = int(out[key])
    return out
