"""A Responses API request as a Chat Completions request, and a Chat Completions answer as
Responses output items. Pure: no I/O, no settings.

The Chat Completions body made here is what a ``/v1/chat/completions`` client would send for the
same turn, so a response then takes the very path a completion takes (validation, queue,
provider, store). Choices made where the two APIs differ:

- ``instructions`` become a ``system`` message first (``developer`` input messages become
  ``system`` ones too: Chat Completions providers other than OpenAI know only ``system``). With
  ``previous_response_id`` the earlier turns come after it and before the new input; the
  earlier response's instructions are not carried over, as OpenAI does.
- A message whose parts are all text becomes one string, the parts joined by a newline (as vLLM
  joins them); with an image or a file among them it stays an array of Chat Completions parts.
- ``reasoning`` items ride on the assistant turn that follows them as ``reasoning_content``
  (DeepSeek's field); an assistant message and the function calls after it make one assistant
  turn with ``tool_calls``.
- ``max_output_tokens`` becomes ``max_completion_tokens``: like ``max_output_tokens`` it counts
  reasoning tokens too, and OpenAI's reasoning models refuse ``max_tokens``.
- The functions of a ``namespace`` tool are offered under the name ``<namespace>__<name>``
  (:func:`mangle`); a call to one comes back as a ``function_call`` with ``namespace`` and the
  function's own ``name``, as OpenAI returns namespaced calls. The way back goes through the
  request's table of offered names (:class:`ToolNames`), never by splitting a name.
- Tools a Chat Completions provider cannot run (every type but ``function`` and ``namespace``:
  ``web_search``, ``file_search``, ``code_interpreter``, ``image_generation``,
  ``computer_use_preview``, ``mcp``, ``custom``, ...) are left out and listed in
  :attr:`Translated.omitted_tools` (the route names them in a header), or refused
  (``hosted_tools="refuse"``).
- Fields of the Responses API that have no Chat Completions meaning and change nothing of the
  answer's content (``include``, ``truncation``, ``client_metadata``, ...) are ignored;
  ``conversation`` and ``prompt`` (stored state Sluice does not have) are refused. A field the
  Responses API does not define goes through to the provider under its own name, as
  ``/v1/chat/completions`` forwards what it does not own.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.edge.openai.responses import protocol
from services.edge.openai.responses.protocol import Echo
from services.edge.plumbing.errors import ApiError

OMIT, REFUSE = "omit", "refuse"  # what to do with hosted tools (RESPONSES_HOSTED_TOOLS)
NAME_MAX = 64  # Chat Completions' limit on a function's name
SEPARATOR = "__"
SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority"})
EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}

# Responses fields read here; every other field is forwarded as is.
_READ = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
    "reasoning", "max_output_tokens", "temperature", "top_p", "metadata", "store",
    "background", "stream", "previous_response_id", "service_tier", "user",
    "safety_identifier", "prompt_cache_key", "deadline", "priority", "include", "truncation"})
# Responses fields with no Chat Completions meaning that change nothing of the answer's content.
IGNORED = frozenset({
    "client_metadata", "stream_options", "max_tool_calls", "top_logprobs", "access_programs",
    "background_options", "context_management", "image", "moderation",
    "prompt_cache_options", "prompt_cache_retention"})
# Stored state Sluice does not keep: silently dropping it would change the answer.
REFUSED = {"conversation": "conversations are not served here; chain turns with "
                           "previous_response_id",
           "prompt": "stored prompt templates are not served here; send input and "
                     "instructions"}
# Chat Completions names for what the Responses API spells otherwise.
CHAT_ONLY = {"messages": "input", "max_tokens": "max_output_tokens",
              "max_completion_tokens": "max_output_tokens", "response_format": "text.format",
              "reasoning_effort": "reasoning.effort", "functions": "tools",
              "function_call": "tool_choice", "n": None}
# Where a Chat Completions parameter came from, for errors the Chat Completions validation finds.
_PARAM_ORIGIN = {"max_completion_tokens": "max_output_tokens", "response_format": "text.format",
                 "reasoning_effort": "reasoning.effort"}


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", f"{param}: {message}", param=param)


# --- tool names ---------------------------------------------------------------------------------

def mangle(namespace: str, name: str) -> str:
    """The name a namespaced function is offered under: ``<namespace>__<name>``, or, beyond
    Chat Completions' 64 characters, its first 55 characters, ``_`` and 8 hex digits of its
    SHA-256 (a pure function: a replayed call mangles to the offered name)."""
    joined = f"{namespace}{SEPARATOR}{name}"
    if len(joined) <= NAME_MAX:
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
    return f"{joined[:NAME_MAX - 9]}_{digest}"


@dataclass(frozen=True, slots=True)
class ToolNames:
    """The namespaced functions a request offered: offered name -> (namespace, name)."""

    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)

    def split(self, offered: str) -> tuple[str | None, str]:
        """A called name as the Responses API gives it: (namespace or None, name)."""
        found = self.namespaced.get(offered)
        return found if found is not None else (None, offered)

    def to_json(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.namespaced.items()}

    @classmethod
    def from_json(cls, raw: dict[str, list[str]] | None) -> ToolNames:
        return cls({k: (v[0], v[1]) for k, v in (raw or {}).items()})


# --- the request --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Translated:
    """A Responses request, translated.

    ``chat``: the Chat Completions body (with Sluice's own ``deadline``, ``priority`` and
    ``metadata``), for the same validation and queue as ``/v1/chat/completions``.
    ``input_items``: the request's own input as items (a string input as one user message),
    kept for ``GET .../input_items`` and for a later ``previous_response_id``.
    ``origins[i]``: the Responses parameter ``chat["messages"][i]`` came from.
    """

    chat: dict[str, Any]
    echo: Echo
    input_items: list[dict[str, Any]]
    tool_names: ToolNames
    origins: list[str]
    stream: bool = False
    background: bool = False
    store: bool = True
    previous_response_id: str | None = None
    omitted_tools: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # fields and include values not served


def previous_id(body: Any) -> str | None:
    """The ``previous_response_id`` a body names (checked), so the route can read that
    response before translating."""
    if not isinstance(body, dict):
        return None
    return _opt_str(body, "previous_response_id")


def translate_request(body: Any, *, previous: list[dict[str, Any]] | None = None,
                      hosted_tools: str = OMIT) -> Translated:
    """``previous``: the earlier response's input items (its own history first) then its output
    items, replayed as messages before the new input."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    for name, why in REFUSED.items():
        if body.get(name) is not None:
            raise invalid(name, why)
    for name, instead in CHAT_ONLY.items():
        if name in body:
            hint = f" (the Responses API's is {instead})" if instead else ""
            raise invalid(name, f"not a Responses API field{hint}")
    stream, background = _bool(body, "stream", False), _bool(body, "background", False)
    store = _bool(body, "store", True)
    if background and not store:
        raise invalid("background", "background mode requires store to be true")
    instructions = _opt_str(body, "instructions")
    prev_id = _opt_str(body, "previous_response_id")
    if previous is not None and prev_id is None:
        raise invalid("previous_response_id", "earlier turns given without their id")
    input_items = _input_items(body.get("input"), required=previous is None)
    messages, origins = [], []
    if instructions is not None:
        messages.append({"role": "system", "content": instructions})
        origins.append("instructions")
    for where, items in (("previous_response_id", previous or []), ("input", input_items)):
        converted, from_ = items_to_messages(items, where)
        messages += converted
        origins += from_
    if not messages:
        raise invalid("input", "required (there is nothing to answer)")

    chat: dict[str, Any] = {"messages": messages}
    model = body.get("model")
    if model is not None:
        chat["model"] = model  # checked with the model list by the Chat Completions validation
    tools, names, omitted = _tools(body.get("tools"), hosted_tools)
    if tools:
        chat["tools"] = tools
        parallel = body.get("parallel_tool_calls")
        if parallel is not None:
            chat["parallel_tool_calls"] = _bool(body, "parallel_tool_calls", True)
    choice = _tool_choice(body.get("tool_choice"), body.get("tools"), names)
    if choice is not None and tools:  # with no tool offered a choice means nothing
        chat["tool_choice"] = choice
    _text(body.get("text"), chat)
    effort = _reasoning(body.get("reasoning"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        chat["max_completion_tokens"] = _positive_int("max_output_tokens", max_output)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = _number(name, body[name])
    metadata = _metadata(body.get("metadata"))
    if metadata is not None:
        chat["metadata"] = metadata
    tier = _opt_str(body, "service_tier")
    if tier is not None:
        if tier not in SERVICE_TIERS:
            raise invalid("service_tier", f"must be one of {', '.join(sorted(SERVICE_TIERS))}")
        chat["service_tier"] = tier
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        value = _opt_str(body, name)
        if value is not None:
            chat[name] = value
    for name in ("deadline", "priority"):  # Sluice's own, checked with /v1's rules
        if body.get(name) is not None:
            chat[name] = body[name]
    truncation = _opt_str(body, "truncation") or "disabled"
    if truncation not in ("auto", "disabled"):
        raise invalid("truncation", "must be \"auto\" or \"disabled\"")
    ignored = sorted(k for k in body if k in IGNORED) + _include(body.get("include"))
    if isinstance(body.get("reasoning"), dict) and body["reasoning"].get("summary"):
        ignored.append("reasoning.summary")  # the reasoning text itself is given instead
    for name, value in body.items():  # not the Responses API's: the provider's own extras
        if name not in _READ and name not in IGNORED:
            chat[name] = value

    echo = Echo(model=model if isinstance(model, str) else None, instructions=instructions,
                metadata=metadata, tools=list(body.get("tools") or []),
                tool_choice=body.get("tool_choice") or "auto",
                parallel_tool_calls=_bool(body, "parallel_tool_calls", True),
                temperature=chat.get("temperature"), top_p=chat.get("top_p"),
                max_output_tokens=chat.get("max_completion_tokens"),
                previous_response_id=prev_id, reasoning=body.get("reasoning"),
                text=body.get("text") or {"format": {"type": "text"}},
                background=background, store=store, service_tier=tier,
                user=chat.get("user"), safety_identifier=chat.get("safety_identifier"),
                prompt_cache_key=chat.get("prompt_cache_key"), truncation=truncation)
    return Translated(chat=chat, echo=echo, input_items=input_items, tool_names=names,
                      origins=origins, stream=stream, background=background, store=store,
                      previous_response_id=prev_id, omitted_tools=omitted, ignored=ignored)


def responses_param(chat_param: str | None, origins: list[str]) -> str | None:
    """The Responses parameter behind a Chat Completions one an error names
    (``messages[3].content`` -> ``input[1].content``)."""
    if chat_param is None:
        return None
    if chat_param.startswith("messages["):
        index, _, rest = chat_param[len("messages["):].partition("]")
        if index.isdigit() and int(index) < len(origins):
            return origins[int(index)] + rest
        return "input"
    head, dot, rest = chat_param.partition(".")
    return _PARAM_ORIGIN.get(head, head) + dot + rest


# --- input items --------------------------------------------------------------------------------

def _input_items(raw: Any, *, required: bool) -> list[dict[str, Any]]:
    if raw is None:
        if required:
            raise invalid("input", "required")
        return []
    if isinstance(raw, str):
        if not raw and required:
            raise invalid("input", "must not be empty")
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": raw}]}]
    if not isinstance(raw, list):
        raise invalid("input", "must be a string or an array of input items")
    if not raw and required:
        raise invalid("input", "must not be empty")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise invalid(f"input[{i}]", "must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        items.append(item if "type" in item else {**item, "type": kind})
    return items


class _Turn:
    """The assistant turn being gathered: reasoning, text, refusal, tool calls."""

    __slots__ = ("calls", "content", "origin", "reasoning", "refusal")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.reasoning: str | None = None
        self.content: str | None = None
        self.refusal: str | None = None
        self.calls: list[dict[str, Any]] = []

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.content is None and not self.calls:
            msg["content"] = ""  # a turn of reasoning alone still says something
        if self.calls:
            msg["tool_calls"] = self.calls
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        if self.refusal is not None:
            msg["refusal"] = self.refusal
        return msg


def items_to_messages(items: Iterable[dict[str, Any]],
                      where: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Input (or earlier output) items as Chat Completions messages, with the parameter each
    message came from (``where[i]``)."""
    messages: list[dict[str, Any]] = []
    origins: list[str] = []
    turn: _Turn | None = None

    def close() -> None:
        nonlocal turn
        if turn is not None:
            messages.append(turn.message())
            origins.append(turn.origin)
            turn = None

    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise invalid(f"{at}.role", f"must be one of {', '.join(ROLES)}")
            if role == "assistant":
                if turn is None or turn.content is not None or turn.calls:
                    close()
                    turn = _Turn(at)
                turn.content, turn.refusal = _assistant_text(at, item.get("content"))
            else:
                close()
                messages.append({"role": ROLES[role],
                                 "content": _content(f"{at}.content", item.get("content"))})
                origins.append(at)
        elif kind == "reasoning":
            if turn is not None and (turn.content is not None or turn.calls):
                close()
            turn = turn or _Turn(at)
            text = _reasoning_text(at, item)
            if text:
                turn.reasoning = (turn.reasoning or "") + text
        elif kind == "function_call":
            if turn is None:
                turn = _Turn(at)
            turn.calls.append(_call(at, item))
        elif kind == "function_call_output":
            close()
            messages.append({"role": "tool", "tool_call_id": _str(f"{at}.call_id",
                                                                  item.get("call_id")),
                             "content": _tool_output(f"{at}.output", item.get("output"))})
            origins.append(at)
        elif kind == "item_reference":
            raise invalid(f"{at}.type", "item references are not served here; send the item "
                                        "itself, or chain with previous_response_id")
        else:
            raise invalid(f"{at}.type", f"{kind!r} items are not served here (message, "
                                        "reasoning, function_call and function_call_output are)")
    close()
    return messages, origins


def _content(at: str, content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise invalid(at, "must be a string or a non-empty array of content parts")
    parts = [_part(f"{at}[{j}]", part) for j, part in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _part(at: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise invalid(at, "must be an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _str(f"{at}.text", part.get("text"), empty=True)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise invalid(f"{at}.image_url", "required (a URL or a data: URL; file_id is not "
                                             "served here)")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise invalid(f"{at}.file_data", "required (file_id and file_url are not served "
                                             "here)")
        file = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise invalid(f"{at}.type", "must be input_text, input_image or input_file")


def _assistant_text(at: str, content: Any) -> tuple[str, str | None]:
    """(text, refusal) of an assistant message (its output_text and refusal parts)."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise invalid(f"{at}.content", "must be a string or an array of content parts")
    texts, refusals = [], []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise invalid(f"{at}.content[{j}]", "must be an object")
        if part.get("type") == "refusal":
            refusals.append(_str(f"{at}.content[{j}].refusal", part.get("refusal"), empty=True))
        elif part.get("type") in ("output_text", "input_text", "text"):
            texts.append(_str(f"{at}.content[{j}].text", part.get("text"), empty=True))
        else:
            raise invalid(f"{at}.content[{j}].type", "must be output_text or refusal")
    return "".join(texts), ("".join(refusals) if refusals else None)


def _reasoning_text(at: str, item: dict[str, Any]) -> str:
    """A reasoning item's own text (``content``); its summary is not the reasoning, and
    ``encrypted_content`` is OpenAI's alone: neither is replayed."""
    content = item.get("content") or []
    if not isinstance(content, list):
        raise invalid(f"{at}.content", "must be an array")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise invalid(f"{at}.content[{j}]", "must be a reasoning_text part")
        texts.append(part["text"])
    return "".join(texts)


def _call(at: str, item: dict[str, Any]) -> dict[str, Any]:
    name = _str(f"{at}.name", item.get("name"))
    namespace = item.get("namespace")
    if namespace is not None:
        name = mangle(_str(f"{at}.namespace", namespace), name)
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise invalid(f"{at}.arguments", "must be a string (JSON text)")
    return {"id": _str(f"{at}.call_id", item.get("call_id")), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _tool_output(at: str, output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) and p.get("type") == "input_text"
                                        for p in output):
        return "\n".join(_str(f"{at}[{j}].text", p.get("text"), empty=True)
                         for j, p in enumerate(output))
    raise invalid(at, "must be a string or an array of input_text parts (a Chat Completions "
                      "tool message holds text only)")


# --- tools --------------------------------------------------------------------------------------

def _tools(raw: Any, hosted: str) -> tuple[list[dict[str, Any]], ToolNames, list[str]]:
    """(Chat Completions tools, the namespaced names, the types left out)."""
    if raw is None:
        return [], ToolNames(), []
    if not isinstance(raw, list):
        raise invalid("tools", "must be an array")
    out: list[dict[str, Any]] = []
    namespaced: dict[str, tuple[str, str]] = {}
    omitted: list[str] = []
    seen: dict[str, tuple[str | None, str, str]] = {}  # offered name -> (ns, name, where)

    def offer(at: str, tool: dict[str, Any], offered: str, ns: str | None = None) -> None:
        """Offered twice as the same function is the client's business (the provider may
        refuse it); two functions under one offered name could not be told apart on the way
        back, so that is refused."""
        name = tool["name"]
        first = seen.setdefault(offered, (ns, name, at))
        if first[:2] != (ns, name):
            raise invalid(f"{at}.name", f"offered as {offered!r}, the name of the function "
                                        f"at {first[2]} too")
        function: dict[str, Any] = {"name": offered}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})

    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(at, "must be an object")
        kind = tool.get("type")
        if kind == "function":
            offer(at, tool, _str(f"{at}.name", tool.get("name"), most=NAME_MAX))
        elif kind == "namespace":
            ns = _str(f"{at}.name", tool.get("name"), most=NAME_MAX)
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise invalid(f"{at}.tools", "must be an array")
            for j, fn in enumerate(inner):
                where = f"{at}.tools[{j}]"
                if not isinstance(fn, dict):
                    raise invalid(where, "must be an object")
                if fn.get("type") != "function":
                    omitted.append(f"{ns}.{fn.get('type')}")  # a custom tool in a namespace
                    continue
                name = _str(f"{where}.name", fn.get("name"), most=NAME_MAX)
                offered = mangle(ns, name)
                namespaced[offered] = (ns, name)
                offer(where, fn, offered, ns)
        elif isinstance(kind, str) and kind:
            omitted.append(kind)
        else:
            raise invalid(f"{at}.type", "required")
    if omitted and hosted == REFUSE:
        raise invalid("tools", f"tools this server cannot run: {', '.join(omitted)} (a Chat "
                               "Completions provider runs only function tools)")
    return out, ToolNames(namespaced), omitted


def _tool_choice(raw: Any, tools: Any, names: ToolNames) -> Any:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, str):
        raise invalid("tool_choice", "must be auto, none, required or an object")
    if not isinstance(raw, dict):
        raise invalid("tool_choice", "must be a string or an object")
    kind = raw.get("type")
    if kind == "function":
        name = _str("tool_choice.name", raw.get("name"))
        if raw.get("namespace") is not None:
            name = mangle(_str("tool_choice.namespace", raw["namespace"]), name)
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        mode = raw.get("mode")
        if mode not in ("auto", "required"):
            raise invalid("tool_choice.mode", "must be auto or required")
        allowed = raw.get("tools")
        if not isinstance(allowed, list):
            raise invalid("tool_choice.tools", "must be an array")
        functions = [{"type": "function", "function": {"name": _str(
            f"tool_choice.tools[{k}].name", t.get("name"))}}
            for k, t in enumerate(allowed) if isinstance(t, dict) and t.get("type") == "function"]
        if not functions:
            return mode
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": functions}}
    return None  # a hosted tool's choice: that tool is left out, so the provider picks


# --- text format, reasoning, include ------------------------------------------------------------

def _text(raw: Any, chat: dict[str, Any]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise invalid("text", "must be an object")
    fmt = raw.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise invalid("text.format", "must be an object")
        kind = fmt.get("type")
        if kind == "json_object":
            chat["response_format"] = {"type": "json_object"}
        elif kind == "json_schema":
            schema = fmt.get("schema")
            if not isinstance(schema, dict):
                raise invalid("text.format.schema", "must be an object (a JSON Schema)")
            spec: dict[str, Any] = {"name": _str("text.format.name", fmt.get("name"), most=64),
                                    "schema": schema}
            for key in ("description", "strict"):
                if fmt.get(key) is not None:
                    spec[key] = fmt[key]
            chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif kind != "text":
            raise invalid("text.format.type", "must be text, json_object or json_schema")
    if raw.get("verbosity") is not None:
        chat["verbosity"] = raw["verbosity"]


def _reasoning(raw: Any) -> str | None:
    """``reasoning.effort`` (``summary`` cannot be served: the reasoning text itself is given)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid("reasoning", "must be an object")
    effort = raw.get("effort")
    if effort is not None and (not isinstance(effort, str) or effort not in EFFORTS):
        raise invalid("reasoning.effort", f"must be one of {', '.join(sorted(EFFORTS))}")
    return effort


def _include(raw: Any) -> list[str]:
    """Every ``include`` value is ignored: Sluice has no encrypted reasoning, no hosted tool
    results, and relays no logprobs in Responses items yet."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise invalid("include", "must be an array of strings")
    return [f"include:{v}" for v in raw]


# --- scalars ------------------------------------------------------------------------------------

def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, "must be a boolean")
    return value


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(name, "must be a string")
    return value


def _str(at: str, value: Any, *, most: int | None = None, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise invalid(at, "must be a non-empty string" if not empty else "must be a string")
    if most is not None and len(value) > most:
        raise invalid(at, f"at most {most} characters")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(name, "must be a positive integer")
    return value  # its upper bound is /v1's, checked with the rest of the request


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(name, "must be a number")
    return float(value)  # its range is /v1's, checked with the rest of the request


def _metadata(raw: Any) -> dict[str, Any] | None:
    """Sluice's rule, as on /v1/chat/completions: an object, its size and depth checked with
    the rest of the request (OpenAI's stricter 16 string pairs would refuse what every other
    route of Sluice takes, such as the mock provider's ``mock`` options)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid("metadata", "must be an object")
    return raw


# --- the answer ---------------------------------------------------------------------------------

def output_items(result: dict[str, Any] | None, resp_id: str, names: ToolNames,
                 incomplete: bool = False) -> list[dict[str, Any]]:
    """A Chat Completions answer (Sluice's stored result, or a ``choices[0].message`` with
    ``finish_reason`` beside it) as output items: reasoning, then the message, then the
    function calls. An answer with neither text nor calls is one empty message. When the
    answer is ``incomplete`` its last item is marked so."""
    result = result or {}
    reasoning = result.get("reasoning_content") or result.get("reasoning") or ""
    content = result.get("content") or ""
    refusal = result.get("refusal") or ""
    calls = result.get("tool_calls") or []
    items: list[dict[str, Any]] = []
    if reasoning:
        items.append(protocol.reasoning_item(protocol.item_id("reasoning", resp_id, 0),
                                             reasoning, protocol.COMPLETED))
    if content or refusal or not calls:
        parts = []
        if content or not refusal:
            parts.append(protocol.text_part(content))
        if refusal:
            parts.append(protocol.refusal_part(refusal))
        items.append(protocol.message_item(protocol.item_id("message", resp_id, len(items)),
                                           parts, protocol.COMPLETED))
    for call in calls:
        function = call.get("function") or {}
        namespace, name = names.split(function.get("name") or "")
        index = len(items)
        items.append(protocol.function_call_item(
            protocol.item_id("function_call", resp_id, index),
            call.get("id") or call_id_for(resp_id, index), name, namespace,
            function.get("arguments") or "", protocol.COMPLETED))
    if incomplete and items:
        items[-1]["status"] = protocol.INCOMPLETE
    return items


def call_id_for(resp_id: str, output_index: int) -> str:
    """The ``call_id`` of a call the provider gave no id (some local servers do not)."""
    return f"call_{resp_id.removeprefix(protocol.RESPONSE_PREFIX)}_{output_index}"
