"""The demo task: arithmetic in chat form, with step-by-step thinking traces. Seeded, so every run makes the same data.

A problem is a + b, a - b (a >= b) or a × d (d one digit), asked bare ("What is 4821 + 3967?") or as a short word
problem. In thinking mode the assistant works column by column inside <think>…</think>, keeping the digits found
"so far", then answers; in non-thinking mode it answers straight after the empty think block. The thinking is what
makes the problem easy: each line needs two digits, a carry and a small sum, where the direct answer needs all of
them at once.

Chat samples follow Qwen3's thinking-mode fusion (tech report §4.3): a user turn may end in /think or /no_think, the
last flag in the conversation wins, no flag means thinking. Some thinking samples are cut at a random budget by the
early-stop text, then answered anyway, so the model learns to answer from partial thinking (the budget curve).

Problems whose (op, a, b) hash to 0 mod 10 never appear in training: evaluation draws only those.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from minqwen3 import EARLY_STOP
from minqwen3.chat_template import apply_chat_template
from minqwen3.tokenizer import IM_END

TOKENIZER_JSON = Path(__file__).resolve().parents[1] / "minqwen3" / "assets" / "tokenizer.json"
# What is fed in when the thinking budget runs out: the tech report's text (§4.3, minqwen3.chat() uses it) and the
# variant of Qwen's example code (a blank line before, no "." after </think>). Training sees both.
STOP_SENTENCE = EARLY_STOP.split("\n</think>")[0]
STOP_TEXTS = (EARLY_STOP, "\n\n" + STOP_SENTENCE + "\n</think>\n\n")
PLACES = ("ones", "tens", "hundreds", "thousands")
OPS = ("+", "-", "×")

NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Omar", "Zoe")
ITEMS = ("apple", "pencil", "marble", "sticker", "card", "coin", "book", "shell")
QUESTIONS = {
    "+": ("What is {a} + {b}?", "Compute {a} + {b}.", "{a} + {b} = ?", "Add {a} and {b}.",
          "What is the sum of {a} and {b}?"),
    "-": ("What is {a} - {b}?", "Compute {a} - {b}.", "{a} - {b} = ?", "Subtract {b} from {a}.",
          "What is {a} minus {b}?"),
    "×": ("What is {a} × {b}?", "What is {a} * {b}?", "Compute {a} times {b}.", "{a} × {b} = ?",
          "Multiply {a} by {b}."),
}
WORD = {  # (question, the line that turns it into arithmetic)
    "+": (("{name} has {a} {item}s and buys {b} more. How many {item}s does {name} have now?",
           "{name} has {a} {item}s and gets {b} more, so I need {a} + {b}."),
          ("A shop sold {a} {item}s on Monday and {b} on Tuesday. How many {item}s did it sell in total?",
           "The two days together are {a} + {b}.")),
    "-": (("{name} had {a} {item}s and gave {b} of them away. How many {item}s are left?",
           "{name} is left with {a} - {b} {item}s."),
          ("A box holds {a} {item}s. {b} are taken out. How many {item}s remain in the box?",
           "What remains is {a} - {b}.")),
    "×": (("There are {b} bags with {a} {item}s in each bag. How many {item}s are there?",
           "{b} bags of {a} is {a} × {b}."),
          ("{name} reads {a} pages a day for {b} days. How many pages is that?",
           "{b} days of {a} pages is {a} × {b}.")),
}


def is_held_out(op: str, a: int, b: int) -> bool:
    """One problem in ten is reserved for evaluation (a fixed hash, the same on every machine)."""
    return (a * 7919 + b * 104729 + OPS.index(op) * 1299709) % 10 == 0


@dataclass(frozen=True)
class Problem:
    op: str  # "+", "-" or "×"
    a: int  # for "-", a >= b; for "×", b is one digit
    b: int
    question: str
    setup: str = ""  # for word problems: the thinking's first line, which names the arithmetic

    @property
    def answer(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "×": self.a * self.b}[self.op]

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def make_problem(rng: random.Random, kind: str | None = None, digits: tuple[int, int] | None = None,
                 held_out: bool = False) -> Problem:
    """A random problem; kind "+", "-", "×" or "word" (default: any); digits fixes the operands' lengths.

    held_out=False never returns an evaluation problem, held_out=True only returns those.
    """
    kind = kind or rng.choices(("+", "-", "×", "word"), weights=(3, 3, 2, 2))[0]
    word = kind == "word"
    op = rng.choice(OPS) if word else kind
    while True:
        if digits:
            da, db = digits
        elif op == "×":  # the bigger factor has 1 to 3 digits, the other one
            da, db = rng.choices((1, 2, 3), weights=(1, 2, 4))[0], 1
        else:  # lengths 1 to 4, longer ones more often: they are the hard ones
            da, db = rng.choices((1, 2, 3, 4), weights=(1, 2, 3, 4), k=2)
        if word:
            da, db = min(da, 3), min(db, 3)
        a, b = _number(rng, da), _number(rng, db)
        if op == "×" and rng.random() < 0.3 and not digits:
            b = rng.randint(2, 9)
        if op == "-" and a < b:
            a, b = b, a
        if is_held_out(op, a, b) == held_out:
            break
    if word:
        question, setup = rng.choice(WORD[op])
        fill = dict(a=a, b=b, name=rng.choice(NAMES), item=rng.choice(ITEMS))
        return Problem(op, a, b, question.format(**fill), setup.format(**fill))
    template = rng.choice(QUESTIONS[op])
    if op == "×" and rng.random() < 0.3:  # the one-digit factor first: the thinking swaps them
        return Problem(op, a, b, template.format(a=b, b=a))
    return Problem(op, a, b, template.format(a=a, b=b))


def trace(p: Problem) -> str:
    """The step-by-step thinking for a problem: one line per column, right to left, carrying the digits so far."""
    lines = [p.setup] if p.setup else []
    a, b = str(p.a), str(p.b)
    verb = {"+": "add", "-": "subtract", "×": "multiply digit by digit"}[p.op]
    lines.append(f"{p.expression}: {verb}, starting from the ones.")
    n = max(len(a), len(b)) if p.op != "×" else len(a)
    carry, so_far = 0, ""
    for i in range(n):
        x = int(a[-1 - i]) if i < len(a) else 0
        y = int(b[-1 - i]) if i < len(b) else 0
        head = f"{PLACES[i]}: "
        if p.op == "+":
            s = x + y + carry
            so_far = str(s % 10) + so_far
            lines.append(f"{head}{x}+{y}+{carry}={s}, carry {s // 10}, so far {so_far}")
            carry = s // 10
        elif p.op == "-":
            s = x - y - carry
            if s < 0:
                so_far = str(s + 10) + so_far
                lines.append(f"{head}{x}-{y}-{carry} is below 0, borrow 10: {x + 10}-{y}-{carry}={s + 10}, "
                             f"borrow 1, so far {so_far}")
                carry = 1
            else:
                so_far = str(s) + so_far
                lines.append(f"{head}{x}-{y}-{carry}={s}, borrow 0, so far {so_far}")
                carry = 0
        else:
            s = x * p.b + carry
            so_far = str(s % 10) + so_far
            lines.append(f"{head}{x}×{p.b}+{carry}={s}, carry {s // 10}, so far {so_far}")
            carry = s // 10
    if carry and p.op != "-":
        so_far = str(carry) + so_far
        lines.append(f"carry {carry} goes in front: {so_far}")
    lines.append(f"So {p.expression} = {p.answer}.")
    return "\n".join(lines)


def answer_text(p: Problem) -> str:
    return f"The answer is {p.answer}."


def extract_answer(content: str) -> int | None:
    """The last integer in a reply's answer part (after the thinking), or None."""
    nums = re.findall(r"-?\d+", content.replace(",", ""))
    return int(nums[-1]) if nums else None


def check(p: Problem, content: str) -> bool:
    return extract_answer(content) == p.answer


# ---------------------------------------------------------------- chat samples for training
@dataclass
class Mix:
    """How training samples are drawn (probabilities)."""
    second_turn: float = 0.15  # a two-turn conversation (the first answer is history: no thinking, no loss)
    flag_think: float = 0.15  # a user turn ends in " /think"
    flag_no_think: float = 0.3  # ... or in " /no_think"; neither: the default (thinking)
    prefill_no_think: float = 0.08  # enable_thinking=False: the empty think block is part of the prompt
    budget_cut: float = 0.3  # a thinking sample is cut at a random budget by the early-stop text


def _flag(rng: random.Random, mix: Mix) -> str:
    r = rng.random()
    return " /think" if r < mix.flag_think else " /no_think" if r < mix.flag_think + mix.flag_no_think else ""


def make_chat(rng: random.Random, mix: Mix = Mix()) -> dict:
    """One training conversation, as text: the prompt (rendered by the chat template) and what follows it.

    Returns {"prompt", "completion"} for a whole sample, or, for a sample cut by the thinking budget,
    {"prompt", "thinking", "stop", "answer"}: the budget is applied to the tokens of "thinking", and "stop"
    is text the inference code inserts, not the model, so it carries no loss.
    """
    messages, thinking = [], True
    for _ in range(2 if rng.random() < mix.second_turn else 1):
        p = make_problem(rng)
        flag = _flag(rng, mix)
        thinking = {" /think": True, " /no_think": False}.get(flag, thinking)  # the last flag wins
        messages += [{"role": "user", "content": p.question + flag}, {"role": "assistant", "content": answer_text(p)}]
    messages.pop()  # the last answer is the one being taught; earlier ones are history
    prefill = rng.random() < mix.prefill_no_think
    thinking = thinking and not prefill
    prompt = apply_chat_template(messages, add_generation_prompt=True, enable_thinking=not prefill)
    if thinking and rng.random() < mix.budget_cut:
        return dict(prompt=prompt, thinking="<think>\n" + trace(p), stop=rng.choice(STOP_TEXTS),
                    answer=answer_text(p))
    reply = {"role": "assistant", "content": answer_text(p), "reasoning_content": trace(p) if thinking else ""}
    full = apply_chat_template(messages + [reply])
    # the final turn always gets a think block, empty or not, so the prompt (prefilled or not) is a prefix
    assert full.startswith(prompt), "the chat template changed the prompt when the reply was added"
    return dict(prompt=prompt, completion=full[len(prompt):].removesuffix("\n"))  # up to <|im_end|>


def encode_chats(chats: list[dict], encode_batch, rng: random.Random) -> list[tuple[list[int], list[bool]]]:
    """Token ids and loss mask of each sample: the loss covers what the model itself must write.

    encode_batch: list[str] -> list[list[int]] (the official tokenizer, special tokens allowed). The prompt and
    the reply are encoded apart; their boundary is a special token or a newline, so this equals encoding them
    joined (a test checks it). A cut sample keeps 0..all tokens of its thinking after <think> (its budget).
    """
    keys = [[k for k in ("prompt", "completion", "thinking", "stop", "answer") if k in c] for c in chats]
    flat = encode_batch([c[k] for c, ks in zip(chats, keys) for k in ks])
    out, i = [], 0
    for ks in keys:
        parts = dict(zip(ks, flat[i:i + len(ks)]))
        i += len(ks)
        ids = parts["prompt"]
        mask = [False] * len(ids)
        if "completion" in parts:
            out.append((ids + parts["completion"], mask + [True] * len(parts["completion"])))
            continue
        think = parts["thinking"][:1 + rng.randint(0, len(parts["thinking"]) - 1)]  # <think> + budget tokens
        answer = parts["answer"] + [IM_END]
        out.append((ids + think + parts["stop"] + answer,
                    mask + [True] * len(think) + [False] * len(parts["stop"]) + [True] * len(answer)))
    return out


def load_encoder():
    """encode_batch for the official tokenizer (the copy bundled in minqwen3/assets), special tokens allowed."""
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(str(TOKENIZER_JSON))
    return lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def make_samples(seed: int, n: int, encode_batch, mix: Mix = Mix()) -> list[tuple[list[int], list[bool]]]:
    """n training samples (ids, loss mask) of the stream `seed`: the same on every machine and every run."""
    rng = random.Random(seed)
    return encode_chats([make_chat(rng, mix) for _ in range(n)], encode_batch, rng)


def eval_problems(n_per_kind: int = 100, seed: int = 1234) -> list[tuple[str, Problem]]:
    """Held-out problems, by category: 4-digit + and -, 3-digit × 1-digit, word problems, and mixed lengths."""
    rng = random.Random(seed)
    kinds = {"add 4+4 digits": dict(kind="+", digits=(4, 4)), "sub 4-4 digits": dict(kind="-", digits=(4, 4)),
             "mul 3x1 digits": dict(kind="×", digits=(3, 1)), "word problems": dict(kind="word"),
             "mixed lengths": dict()}
    out = []
    for name, kw in kinds.items():
        for _ in range(n_per_kind):
            out.append((name, make_problem(rng, held_out=True, **kw)))
    return out
