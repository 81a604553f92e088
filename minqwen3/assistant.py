"""One assistant turn: render the conversation, generate with Qwen3's per-mode defaults, split thinking from answer.

Thinking mode: the model opens <think> itself, reasons, closes </think> and answers. A thinking budget (Qwen3 tech
report, section 4.3) caps the reasoning: when it has run `thinking_budget` tokens without closing, we append the
report's early-stop sentence, which ends with </think>, to what it wrote and let the model write its answer. As in
Qwen's example code, a blank line separates the sentence from the cut thought (unless the thought ends in one).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .chat_template import check_messages
from .generation import (NON_THINKING_DEFAULTS, THINKING_DEFAULTS, check_context, check_sampling, check_stop_ids,
                         generate)

# the tech report's text, verbatim (the "." after </think> included)
EARLY_STOP = ("Considering the limited time by the user, I have to give the solution based on the thinking "
              "directly now.\n</think>.\n\n")
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "presence_penalty")


def early_stop_ids(tokenizer, before: Sequence[int]) -> list[int]:
    """What is fed when the budget runs out after the ids `before`: EARLY_STOP, after "\n\n" as Qwen's example code
    does, or after as many newlines as complete a blank line. </think> in it is the control token (the model's own)."""
    tail = tokenizer.decode(list(before[-2:]))  # two tokens hold at least two characters
    return tokenizer.encode("\n" * (2 - (len(tail) - len(tail.rstrip("\n")))) + EARLY_STOP)


@dataclass
class Reply:
    reasoning: str  # the thinking, without the <think> tags ("" in non-thinking mode)
    content: str  # the answer
    text: str  # everything generated, decoded as is (the stop token left out)
    prompt_tokens: int
    reasoning_tokens: int  # <think> through </think>, the early-stop text included
    content_tokens: int  # after </think>, the stop token included
    seconds: float  # wall time: prefill and decode
    tokens_per_second: float  # generated tokens / seconds
    finish_reason: str = "stop"  # "stop": a stop token; "length": max_new_tokens or the context ran out
    budget_hit: bool = False  # the thinking budget ran out and EARLY_STOP was fed
    ids: list[int] = field(default_factory=list)  # the generated ids, the stop token included
    sampling: dict = field(default_factory=dict)  # the settings used

    def message(self) -> dict:
        """This turn for the conversation history, its reasoning as reasoning_content: the template drops it from
        turns before the last user message, and keeps it after (a tool call's turn, answered by a tool)."""
        # always given, "" too: without it the template would split the content at any "</think>" it spells
        return {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning}


def split_reply(ids: Sequence[int], tokenizer, opened: bool, early_stop: bool = False) -> tuple[str, str]:
    """Generated ids (the stop token left out) -> (reasoning, content), split at the </think> *token* that closed
    the reasoning, the first: where chat()'s stream switched from reasoning to answer (the newlines right after
    </think> stripped). Text that spells "</think>" in the answer (the model writing about its tags) or a second
    </think> token after a budget's early stop stays in the content; parse_reply, which splits decoded text,
    would drop what lay between them.
    opened: the prompt opened the <think> block (else the reasoning starts at a <think> the model wrote; without
    one there is no reasoning, as the stream had none). early_stop: EARLY_STOP was fed, whose </think> leaves
    ".\n\n" before the answer."""
    ids = list(ids)
    think, end = tokenizer.think_id, tokenizer.end_think_id
    if not opened and think not in ids:
        return "", tokenizer.decode(ids)
    start = 0 if opened else ids.index(think) + 1
    before = tokenizer.decode(ids[:max(start - 1, 0)])  # anything the model wrote before opening <think> itself
    if end not in ids[start:]:  # cut off before the reasoning closed
        return tokenizer.decode(ids[start:]).strip("\n"), before
    stop = ids.index(end, start)
    after = tokenizer.decode(ids[stop + 1:])
    if early_stop:
        after = after.removeprefix(".")
    return tokenizer.decode(ids[start:stop]).strip("\n"), before + after.lstrip("\n")


def _think_open(prompt: list[int], tokenizer) -> bool:
    """Does the assistant turn the prompt opens already start a <think> block (a template or prefill that starts
    the reasoning itself)? Only the last turn counts: a user may type "<think>" in a message."""
    rev = prompt[::-1]
    turn = rev[:rev.index(tokenizer.im_start_id)] if tokenizer.im_start_id in rev else rev
    think, end = tokenizer.think_id, tokenizer.end_think_id
    return think in turn and (end not in turn or turn.index(think) < turn.index(end))


@torch.no_grad()
def chat(model, tokenizer, messages: Sequence[Mapping] | str, *, enable_thinking: bool = True,
         thinking_budget: int | None = None, max_new_tokens: int = 4096, seed: int | None = None,
         stream: Callable[[str, str], None] | None = None, tools: Sequence[Mapping] | None = None,
         stop_ids: Sequence[int] | None = None, fast: bool | None = None, **sampling) -> Reply:
    """Generate the assistant's next turn for `messages` (a list of {"role", "content"}, or one user message).

    Sampling defaults to Qwen's published settings for the mode (THINKING_DEFAULTS / NON_THINKING_DEFAULTS);
    pass temperature=, top_k=, top_p=, min_p=, presence_penalty= to override (temperature=0: greedy).
    stream(kind, piece) receives the text as it is generated, kind "reasoning" or "content"; the pieces
    concatenate to Reply.text. Generation stops at <|im_end|> / <|endoftext|> (or stop_ids) or max_new_tokens.
    fast: as in generate(), on by default on a GPU (then the stream comes in bursts of 16 tokens).
    With a thinking budget the reply is generated in phases (up to <think>, up to the budget, the rest), each
    prompt holding what came before (and the presence penalty counting all of the reply so far).
    """
    unknown = sorted(set(sampling) - set(SAMPLING))
    if unknown:
        raise TypeError(f"chat() got unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(SAMPLING)}")
    settings = {**(THINKING_DEFAULTS if enable_thinking else NON_THINKING_DEFAULTS), "presence_penalty": 0.0,
                **sampling}
    check_sampling(**settings, seed=seed, max_new_tokens=max_new_tokens, thinking_budget=thinking_budget)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    check_messages(messages)
    t0 = time.perf_counter()
    prompt = tokenizer.encode_messages(messages, tools=tools, add_generation_prompt=True,
                                       enable_thinking=enable_thinking)
    n = check_context(model, len(prompt), max_new_tokens)  # fails here, before any model work
    stops = ({tokenizer.im_end_id, tokenizer.endoftext_id} if stop_ids is None
             else set(check_stop_ids(stop_ids)))
    think_id, end_think_id = tokenizer.think_id, tokenizer.end_think_id
    decoder = tokenizer.stream()
    out: list[int] = []
    n_reasoning = 0
    opened = _think_open(prompt, tokenizer)
    thinking, think_len, closed, budget_hit, forcing = opened, 0, False, False, False
    finish = "length"

    def emit(tok: int) -> None:
        nonlocal thinking, think_len, closed, n_reasoning
        out.append(tok)
        was = thinking
        if tok == think_id and not closed:
            thinking = True
        elif thinking:
            think_len += 1
            thinking = tok != end_think_id
            closed = not thinking
        # the tags belong to the reasoning, and so does all of the early-stop text (the "." after its </think> too)
        kind = "reasoning" if was or thinking or forcing else "content"
        n_reasoning += kind == "reasoning"
        piece = decoder.push(tok)
        if stream and piece:
            stream(kind, piece)

    def take(ids: torch.Tensor) -> None:  # generate()'s on_token: each new id (batch of one) as it comes
        nonlocal finish
        tok = int(ids[0])
        if tok in stops:
            out.append(tok)
            finish = "stop"
        else:
            emit(tok)

    phase = 0
    while len(out) < n and finish == "length":
        if thinking and thinking_budget is not None and think_len >= thinking_budget:
            forcing, budget_hit = True, True
            for tok in early_stop_ids(tokenizer, prompt + out)[:n - len(out)]:  # what still fits
                emit(tok)
            forcing = False
            continue
        # one generate() call up to a stop token or the room left; with a budget, also up to where it must be
        # looked at: after <think> opens the reasoning, and when the reasoning has used the budget up
        limit, phase_stops = n - len(out), set(stops)
        if thinking_budget is not None and thinking:
            limit = min(limit, thinking_budget - think_len)
        elif thinking_budget is not None and not closed:
            phase_stops.add(think_id)
        generate(model, [prompt + out], limit, **settings, seed=None if seed is None else (seed + phase) % 2**64,
                 stop_ids=tuple(phase_stops), on_token=take, vocab_limit=len(tokenizer), fast=fast,
                 generated=[list(out)] if settings["presence_penalty"] else None)
        phase += 1
    tail = decoder.flush()
    if stream and tail:
        stream("reasoning" if thinking else "content", tail)
    seconds = time.perf_counter() - t0

    body = out[:-1] if finish == "stop" else out
    text = tokenizer.decode(body)
    reasoning, content = split_reply(body, tokenizer, opened, budget_hit)
    return Reply(reasoning=reasoning, content=content, text=text, prompt_tokens=len(prompt),
                 reasoning_tokens=n_reasoning, content_tokens=len(out) - n_reasoning, seconds=seconds,
                 tokens_per_second=len(out) / seconds if seconds > 0 else 0.0, finish_reason=finish,
                 budget_hit=budget_hit, ids=out, sampling=settings)
