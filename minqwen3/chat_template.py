"""Qwen3's dual-mode chat template, in plain Python.

The official template is a Jinja program (shipped as `chat_template` with every Qwen3 checkpoint). This module
re-implements it line for line, so that for every conversation the Jinja template accepts we produce the very same
string, byte for byte. Jinja's loose semantics are part of that contract, so they are mirrored on purpose:

- a missing key reads as Jinja's `Undefined`: falsy, prints as "", and never equals a role name;
- content that is not a string renders as "" (the template's `is string` guards), except the first system message,
  whose content the template concatenates unguarded, so a non-string there is an error;
- messages with an unknown role (or none) are dropped silently, exactly as the template drops them.

Where the template fails (empty conversation, non-string first system content, a tool call without arguments, data
that json cannot serialise) we raise ValueError. One deliberate difference: a message that is not a dict raises
TypeError (Jinja would drop it; transformers rejects it before rendering, and so do we).

The renderer emits segments tagged by where their text comes from: the template itself, the model (the assistant's
earlier turns: content, reasoning, tool calls) or the input (user, system and tool content, tool schemas).
`apply_chat_template` joins them; the tokenizer uses the tags so that markup typed into the input (<|im_end|>, but
also <tool_call> or </tool_response>) stays text instead of acting as a control token.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


class _Undefined:
    """Jinja's Undefined, for what we need of it: falsy, unequal to everything but itself."""
    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<undefined>"


_UNDEFINED = _Undefined()

_TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
               "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
               "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n")
_EMPTY_THINK = "<think>\n\n</think>\n\n"  # what enable_thinking=False pre-fills: a finished, empty reasoning block
TEMPLATE, MODEL, INPUT = "template", "model", "input"  # where a segment's text comes from (see chat_segments)


def _get(obj: Any, key: str) -> Any:
    # Jinja's `obj.key` on JSON-like data: the dict's value, else Undefined (strings, lists, None have no such key)
    return obj.get(key, _UNDEFINED) if isinstance(obj, Mapping) else _UNDEFINED


def _string_or_empty(x: Any) -> str:
    return x if isinstance(x, str) else ""


def _tojson(x: Any, what: str) -> str:
    # transformers' `tojson` filter: json.dumps with ensure_ascii=False and the default ", " / ": " separators
    if x is _UNDEFINED:
        raise ValueError(f"{what} is missing: the Qwen3 chat template needs it (it renders it with tojson)")
    try:
        return json.dumps(x, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} cannot be rendered as JSON by the Qwen3 chat template: {e}") from None


def last_query_index(messages: Sequence[Mapping]) -> int:
    """Index of the last real user query: the last user message with string content that is not a tool response
    wrapped in <tool_response>…</tool_response>. Reasoning is kept only for assistant turns after it.
    With no such message the template falls back to the last index, so no assistant turn keeps its reasoning."""
    for i in range(len(messages) - 1, -1, -1):
        content = _get(messages[i], "content")
        if _get(messages[i], "role") == "user" and isinstance(content, str) and not (
                content.startswith("<tool_response>") and content.endswith("</tool_response>")):
            return i
    return len(messages) - 1


ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Sequence[Mapping]) -> None:
    """What chat() asks of a conversation before rendering it, stricter than the template: the template (and
    transformers) render an unknown role as nothing and a missing or non-string content as empty, so a typo would
    have the model answer an empty prompt. Each message: a dict with a role of ROLES and a string content; an
    assistant turn may instead have tool_calls and no content (None); reasoning_content, if given, a string."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', got "
                            f"{type(m).__name__}: {m!r:.80}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role {role!r}; Qwen3's template knows {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str) and not (role == "assistant" and content is None and m.get("tool_calls")):
            what = "no 'content'" if "content" not in m else f"content of type {type(content).__name__}"
            raise TypeError(f"messages[{i}] ({role}) has {what}: content must be a string"
                            + (" (or None beside tool_calls)" if role == "assistant" else ""))
        if m.get("reasoning_content") is not None and not isinstance(m["reasoning_content"], str):
            raise TypeError(f"messages[{i}] has reasoning_content of type {type(m['reasoning_content']).__name__}, "
                            "not a string")


def chat_segments(messages: Sequence[Mapping], tools: Sequence[Any] | None = None,
                  add_generation_prompt: bool = False, enable_thinking: bool = True) -> list[tuple[str, str]]:
    """Render a conversation as [(text, source)], joined `apply_chat_template`. source: TEMPLATE for the template's
    own text; MODEL for what the model wrote in earlier assistant turns (content, reasoning, tool call names and
    arguments); INPUT for what people and tools wrote (user, system and tool content, the tool schemas)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError("messages is empty: the Qwen3 chat template reads messages[0] and fails on an empty "
                         "conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}: {m!r}")

    out: list[tuple[str, str]] = []
    tpl = lambda s: out.append((s, TEMPLATE))  # noqa: E731  the template's own text
    data = lambda s: out.append((s, INPUT))  # noqa: E731  what people and tools wrote
    said = lambda s: out.append((s, MODEL))  # noqa: E731  what the model wrote in an earlier turn

    # A leading system message goes into the header (merged with the tool block if there are tools).
    has_system = _get(messages[0], "role") == "system"
    if has_system:
        system = _get(messages[0], "content")
        if not isinstance(system, str):  # the template does `messages[0].content + ...` without an `is string` guard
            raise ValueError(f"messages[0] is a system message whose content is {type(system).__name__}, not a "
                             "string: the Qwen3 chat template concatenates it and fails")
    if tools:
        tpl("<|im_start|>system\n")
        if has_system:
            data(system)
            tpl("\n\n")
        tpl(_TOOLS_HEAD)
        for j, tool in enumerate(tools):
            tpl("\n")
            data(_tojson(tool, f"tools[{j}]"))
        tpl(_TOOLS_TAIL)
    elif has_system:
        tpl("<|im_start|>system\n")
        data(system)
        tpl("<|im_end|>\n")

    query = last_query_index(messages)
    n = len(messages)
    for i, m in enumerate(messages):
        role, content = _get(m, "role"), _string_or_empty(_get(m, "content"))
        if role == "user" or (role == "system" and i > 0):
            tpl(f"<|im_start|>{role}\n")
            data(content)
            tpl("<|im_end|>\n")
        elif role == "assistant":
            # Reasoning comes from `reasoning_content`, else from an inline <think>…</think> at the head of content.
            reasoning = _get(m, "reasoning_content")
            if not isinstance(reasoning, str):
                reasoning = ""
                if "</think>" in content:
                    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                    content = content.split("</think>")[-1].lstrip("\n")
            tpl("<|im_start|>assistant\n")
            # Turns after the last user query keep their reasoning (the final turn always gets a think block, even an
            # empty one); earlier turns lose it, since the model never sees old reasoning at inference either.
            if i > query and (i == n - 1 or reasoning):
                tpl("<think>\n")
                said(reasoning.strip("\n"))
                tpl("\n</think>\n\n")
                said(content.lstrip("\n"))
            else:
                said(content)
            calls = _get(m, "tool_calls")
            if calls:
                try:
                    calls = list(calls)  # Jinja iterates whatever it is given (a dict yields its keys)
                except TypeError:
                    raise ValueError(f"messages[{i}].tool_calls must be a list, got {type(calls).__name__}") from None
                for j, call in enumerate(calls):
                    if j > 0 or content:  # `content` before the lstrip above, as in the template
                        tpl("\n")
                    if _get(call, "function"):  # OpenAI nesting {"type": "function", "function": {...}}, or flat
                        call = _get(call, "function")
                    name, args = _get(call, "name"), _get(call, "arguments")
                    tpl('<tool_call>\n{"name": "')
                    said("" if name is _UNDEFINED else str(name))
                    tpl('", "arguments": ')
                    # string arguments go in verbatim (already JSON, presumably); anything else is serialised
                    said(args if isinstance(args, str) else _tojson(args, f"messages[{i}].tool_calls[{j}].arguments"))
                    tpl("}\n</tool_call>")
            tpl("<|im_end|>\n")
        elif role == "tool":
            # Consecutive tool results share one user turn, each in its own <tool_response> block.
            if i == 0 or _get(messages[i - 1], "role") != "tool":
                tpl("<|im_start|>user")
            tpl("\n<tool_response>\n")
            data(content)
            tpl("\n</tool_response>")
            if i == n - 1 or _get(messages[i + 1], "role") != "tool":
                tpl("<|im_end|>\n")
        # any other role (or none): the template renders nothing for it

    if add_generation_prompt:
        tpl("<|im_start|>assistant\n")
        if enable_thinking is False:  # Jinja's `is false`: only the boolean False switches thinking off
            tpl(_EMPTY_THINK)
    return out


def apply_chat_template(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False,
                        enable_thinking: bool = True) -> str:
    """Render a conversation exactly as Qwen3's official Jinja chat template does.

    messages: [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}]; assistant messages may carry
    `reasoning_content` and `tool_calls` ([{"function": {"name", "arguments"}}] or flat {"name", "arguments"}).
    tools: JSON schemas, listed in the system prompt. add_generation_prompt: open an assistant turn for the model.
    enable_thinking=False pre-fills an empty <think> block so the model answers without reasoning.
    """
    return "".join(text for text, _ in chat_segments(messages, tools, add_generation_prompt, enable_thinking))


def parse_reply(text: str) -> tuple[str, str]:
    """Split a generated assistant reply into (reasoning, content), the inverse of how the template renders a turn.

    Reasoning is the text inside <think>…</think> with the surrounding newlines stripped; content is what follows
    the last </think>, leading newlines stripped. The opening <think> may be absent (it can sit in the prompt).
    No think block: ("", text). A reply cut off while thinking (<think> but no </think>): (reasoning so far, "").
    A trailing stop token (<|im_end|> or <|endoftext|>, if it was decoded) is dropped.
    """
    for stop in ("<|im_end|>", "<|endoftext|>"):
        if text.endswith(stop):
            text = text[: -len(stop)]
            break
    if "</think>" in text:  # same splits as the template, so parse_reply(render) recovers what was rendered
        reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        return reasoning, text.split("</think>")[-1].lstrip("\n")
    if "<think>" in text:
        return text.split("<think>")[-1].strip("\n"), ""
    return "", text
