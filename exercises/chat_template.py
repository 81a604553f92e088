"""Exercise 6 · Qwen3's chat template in plain Python.  Read notebooks/06_chat_template.ipynb first.

Check your work:  pytest exercises/test_chat_template.py --impl student
(the tests compare with the official template, minqwen3/assets/chat_template.jinja, byte for byte)

The official template is a Jinja program; open it side by side with this file. Your output must equal its
output byte for byte. Conventions worth knowing (they are the template's):
- every turn is "<|im_start|>{role}\\n{content}<|im_end|>\\n";
- content that is not a string renders as "" (the template's `is string` checks);
- a message without a known role renders nothing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence


def last_query_index(messages: Sequence[Mapping]) -> int:
    """Index of the last real user query: the last message with role "user" whose content is a string that is
    not a tool result (does not both start with "<tool_response>" and end with "</tool_response>").
    If there is none, len(messages) - 1.

    """
    raise NotImplementedError("exercise 6: last_query_index")


def apply_chat_template(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False,
                        enable_thinking: bool = True) -> str:
    """Render a conversation exactly as Qwen3's official chat template does -> the prompt text (str).

    messages: dicts with "role" (system, user, assistant, tool) and "content"; an assistant message may carry
    "reasoning_content" and "tool_calls". tools: JSON-able tool schemas, or None. The spec is the official
    template (minqwen3/assets/chat_template.jinja): the system header with the tool list, reasoning kept only for
    assistant turns after the last real user query, tool calls and tool results, the generation prompt (with an
    empty think block when enable_thinking is False). The hints section at the end of this file walks through it.
    """
    raise NotImplementedError("exercise 6: apply_chat_template")


def parse_reply(text: str) -> tuple[str, str]:
    """Split a generated assistant reply into (reasoning, content): the inverse of how the template renders a turn.

    - a trailing "<|im_end|>" or "<|endoftext|>" is dropped first;
    - with "</think>": reasoning = the text before the first "</think>", trailing newlines stripped, after the
      last "<think>" in it (the opening tag may be missing: it can sit in the prompt), leading newlines
      stripped; content = the text after the last "</think>", leading newlines stripped;
    - "<think>" but no "</think>" (cut off while thinking): (the text after "<think>", newlines stripped, "");
    - neither: ("", text).
    """
    raise NotImplementedError("exercise 6: parse_reply")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# apply_chat_template, in the template's order:
# 1. System header. With tools: "<|im_start|>system\n", then messages[0]'s content + "\n\n" if messages[0]
#    is a system message, then the "# Tools ..." text with one json.dumps(tool, ensure_ascii=False) per line
#    between <tools> and </tools>, then the instructions ending "</tool_call><|im_end|>\n" (copy the
#    template's strings exactly). Without tools: messages[0] as a plain system turn if it is one.
# 2. q = last_query_index(messages).
# 3. Each message:
#    - "user", or "system" when not the first message: a plain turn.
#    - "assistant": reasoning = message["reasoning_content"] if it is a string; otherwise, if "</think>" is
#      in the content, reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
#      and content = content.split("</think>")[-1].lstrip("\n").
#      After the last query (index > q) and (it is the last message, or reasoning is non-empty):
#          "<|im_start|>assistant\n<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
#      otherwise the reasoning is dropped: "<|im_start|>assistant\n" + content.
#      Then each tool call (unwrap call["function"] if present), preceded by "\n" unless it is the first and
#      the content is empty:  '<tool_call>\n{"name": "' + name + '", "arguments": ' + arguments (as is if a
#      string, else json.dumps(..., ensure_ascii=False)) + '}\n</tool_call>'. Finally "<|im_end|>\n".
#    - "tool": consecutive tool messages share one user turn: "<|im_start|>user" before the first of a run,
#      "\n<tool_response>\n" + content + "\n</tool_response>" for each, "<|im_end|>\n" after the last.
# 4. add_generation_prompt: "<|im_start|>assistant\n", plus "<think>\n\n</think>\n\n" when enable_thinking
#    is False (only the boolean False: None keeps thinking on, as Jinja's `is false` does).
# last_query_index: walk the messages backwards.
