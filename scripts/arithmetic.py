"""The demo task: arithmetic in chat form, with step-by-step thinking traces. Seeded, so every run makes the same data.

A problem is a + b, a - b (a >= b) or a × b (b of one or two digits), asked the many ways people type it ("What is
4821 + 3967?", "17+25", "WHAT IS 12 X 11", "Add 4,821 and 3,967") or as a short word problem. In thinking mode the assistant works column by column inside <think>…</think>, keeping the digits found
"so far", then answers; in non-thinking mode it answers straight after the empty think block. The thinking is what
makes the problem easy: each line needs two digits, a carry and a small sum, where the direct answer needs all of
them at once.

Chat samples follow Qwen3's thinking-mode fusion (tech report §4.3): a user turn may end in /think or /no_think, the
last flag in the conversation wins, no flag means thinking. Some thinking samples are cut at a random budget by the
early-stop text, then answered anyway, so the model learns to answer from partial thinking (the budget curve).

Problems whose (op, a, b) hash to 0 mod 10 never appear in training: evaluation draws only those. Evaluation also
asks them in sentence templates that training never uses (HELD_OUT_*), made of words training does use.
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
PLACES = ("ones", "tens", "hundreds", "thousands", "ten thousands")
OPS = ("+", "-", "×")

# ---------------------------------------------------------------- how people ask
# A question is a sentence template filled with an expression ("17+25", "4,821 plus 3,967", "12 x 11") or with the
# numbers alone ("Add 17 and 25"); then its case may change and its final punctuation be replaced or dropped.
SYMBOLS = {"+": ("+", "plus"), "-": ("-", "minus"), "×": ("×", "*", "x", "times", "multiplied by")}
TRAIN_EXPRESSION = ("What is {e}", "Compute {e}", "Calculate {e}", "{e}", "{e} =", "{e} = ?", "How much is {e}",
                    "Please compute {e}", "Tell me {e}", "What is the result of {e}", "Can you calculate {e}",
                    "Solve {e}", "Work out {e}", "what do you get for {e}")
TRAIN_VERBAL = {  # {a} and {b} as asked: for "×" either factor may come first
    "+": ("Add {a} and {b}", "Add {b} to {a}", "What is the sum of {a} and {b}", "Find the sum of {a} and {b}",
          "What do you get if you add {a} and {b}"),
    "-": ("Subtract {b} from {a}", "What is {b} less than {a}", "Take {b} away from {a}",
          "What is the difference of {a} and {b}", "What do you get if you take {b} from {a}"),
    "×": ("Multiply {a} by {b}", "What is the product of {a} and {b}", "Find the product of {a} and {b}",
          "What do you get if you multiply {a} and {b}"),
}
# Held out by phrasing: templates that training never shows, made only of words and symbols that training
# uses (a test checks this), so they measure how far the model generalises. Evaluation only.
HELD_OUT_EXPRESSION = ("Please calculate {e}", "Can you compute {e}", "Tell me the result of {e}",
                       "How much do you get for {e}", "Work out {e} please", "What is {e} =",
                       "Please tell me what {e} is", "Solve {e} for me", "Calculate the result of {e} =")
HELD_OUT_VERBAL = {
    "+": ("Please add {a} and {b}", "Can you find the sum of {a} and {b}", "Tell me the sum of {a} and {b}"),
    "-": ("Please subtract {b} from {a}", "Can you take {b} away from {a}", "Tell me the difference of {a} and {b}"),
    "×": ("Please multiply {a} by {b}", "Can you find the product of {a} and {b}",
          "Tell me the product of {a} and {b}"),
}
PUNCTUATION = ("?", ".", "", "!", " ?", "??")

NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Omar", "Zoe")
ITEMS = ("apple", "pencil", "marble", "sticker", "card", "coin", "book", "shell")
TRAIN_WORD = {  # (question, the thinking's first line, which turns it into arithmetic)
    "+": (("{name} has {a} {item}s and buys {b} more. How many {item}s does {name} have now?",
           "{name} has {a} {item}s and gets {b} more, so I need {a} + {b}."),
          ("A shop sold {a} {item}s on Monday and {b} on Tuesday. How many {item}s did it sell in total?",
           "The two days together are {a} + {b}."),
          ("{name} gets {b} {item}s. Now {name} has them and {a} more. How many {item}s is that in total?",
           "{b} and {a} more is {a} + {b}."),
          ("There are {a} {item}s in a box and {b} in a bag. How many are there in total?",
           "Box and bag together are {a} + {b}.")),
    "-": (("{name} had {a} {item}s and gave {b} of them away. How many {item}s are left?",
           "{name} is left with {a} - {b} {item}s."),
          ("A box holds {a} {item}s. {b} are taken out. How many {item}s remain in the box?",
           "What remains is {a} - {b}."),
          ("{name} has {a} {item}s and sells {b}. How many does {name} have now?",
           "{name} now has {a} - {b}."),
          ("A shop had {a} {item}s and sold {b} of them on Monday. How many {item}s does it have left?",
           "The shop has {a} - {b} left.")),
    "×": (("There are {b} bags with {a} {item}s in each bag. How many {item}s are there?",
           "{b} bags of {a} is {a} × {b}."),
          ("{name} reads {a} pages a day for {b} days. How many pages is that?",
           "{b} days of {a} pages is {a} × {b}."),
          ("A box holds {a} {item}s. How many {item}s are in {b} boxes?",
           "{b} boxes of {a} is {a} × {b}."),
          ("{name} buys {b} {item}s at {a} coins each. How many coins is that in total?",
           "{b} times {a} coins is {a} × {b}.")),
}
# Stage 2 of training (docs/demo.md) adds these: more sentence shapes around the same numbers, so the model learns
# what the words mean rather than which of twelve sentences it is reading. None of them is a held-out template (a
# test checks every training question against those).
MORE_WORD = {
    "+": ("{name} had {a} {item}s. Then {name} got {b} more. How many {item}s does {name} have now?",
          "{name} has {a} {item}s and gets {b} more. How many {item}s is that?",
          "A box has {a} {item}s. {b} more are put in the box. How many {item}s are in the box now?",
          "A shop has {a} {item}s and gets {b} more on Monday. How many {item}s does the shop have now?",
          "{name} sold {a} {item}s on Monday and {b} on Tuesday. How many {item}s did {name} sell?",
          "There are {a} {item}s in a bag. {name} puts {b} more in the bag. How many {item}s are in the bag now?",
          "{name} reads {a} pages on Monday and {b} pages on Tuesday. How many pages is that in total?",
          "{name} buys {a} {item}s and then {b} more. How many {item}s did {name} buy?",
          "{name} has {a} {item}s in a box and {b} in a bag. How many {item}s does {name} have?",
          "On Tuesday a shop gets {b} {item}s. It had {a}. How many {item}s does it have now?"),
    "-": ("{name} has {a} {item}s and gives {b} away. How many {item}s does {name} have now?",
          "There were {a} {item}s in a bag. {name} took {b} out. How many are in the bag now?",
          "A shop has {a} {item}s. It sells {b} of them. How many {item}s are left?",
          "{name} had {a} {item}s. {name} sold {b}. How many {item}s does {name} have left?",
          "Of {a} {item}s, {b} are sold. How many {item}s remain?",
          "{name} has read {b} of {a} pages. How many pages are left?",
          "A shop had {a} {item}s. On Monday it sold {b}. How many {item}s does the shop have now?",
          "{name} takes {b} {item}s out of a box of {a}. How many {item}s are in the box now?",
          "{name} had {a} coins and buys a {item} for {b} coins. How many coins are left?",
          "A bag held {a} {item}s until {b} were taken out. How many remain in the bag?"),
    "×": ("{name} buys {b} boxes of {a} {item}s. How many {item}s is that?",
          "Each bag holds {a} {item}s. How many {item}s are there in {b} bags?",
          "A shop sells {b} boxes with {a} {item}s in each. How many {item}s does it sell?",
          "{name} reads {a} pages each day. How many pages does {name} read in {b} days?",
          "There are {b} boxes and {a} {item}s in each box. How many {item}s are there in total?",
          "{name} has {b} bags and puts {a} {item}s in each bag. How many {item}s is that in total?",
          "{b} boxes hold {a} {item}s each. How many {item}s is that?",
          "A shop sold {a} {item}s a day for {b} days. How many {item}s did it sell?",
          "A {item} costs {a} coins. How many coins do {b} of them cost?",
          "In each of {b} bags there are {a} {item}s. How many {item}s are there?"),
}
# In stage 2 every word problem, old template or new, starts its thinking the same way: the two numbers in the order
# the question gives them, then the arithmetic they make. One first line for every sentence, where the twelve
# sentences of stage 1 had twelve first lines of their own (which a new sentence left the model to guess among).
SETUP = {"+": "The numbers are {x} and {y}; together: {a} + {b}.",
         "-": "The numbers are {x} and {y}; what is left: {a} - {b}.",
         "×": "The numbers are {x} and {y}; {b} groups of {a}: {a} × {b}."}
HELD_OUT_WORD = {
    "+": ("{name} has {a} {item}s. {name} buys {b} more. How many {item}s is that now?",
          "A bag holds {a} {item}s and a box holds {b}. How many {item}s are there in total?",
          "On Monday {name} sold {a} {item}s and on Tuesday {b} more. How many did {name} sell in total?"),
    "-": ("There are {a} {item}s in a box and {b} are taken out. How many {item}s remain?",
          "{name} had {a} {item}s and sold {b} of them. How many are left?",
          "A shop has {a} {item}s and sells {b} of them. How many {item}s does the shop have now?"),
    "×": ("{name} has {b} boxes with {a} {item}s in each box. How many {item}s does {name} have?",
          "A shop sold {b} bags of {a} {item}s. How many {item}s did it sell in total?",
          "{name} reads {a} pages a day. How many pages is that in {b} days?"),
}
PHRASINGS = ("train", "held_out")


def is_held_out(op: str, a: int, b: int) -> bool:
    """One problem in ten is reserved for evaluation (a fixed hash, the same on every machine)."""
    return (a * 7919 + b * 104729 + OPS.index(op) * 1299709) % 10 == 0


@dataclass(frozen=True)
class Problem:
    op: str  # "+", "-" or "×"
    a: int  # for "-", a >= b; for "×", b (the multiplier) has one or two digits and no more than a
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


def _written(rng: random.Random, n: int) -> str:
    """A number as people type it: 4821 or, a third of the time, with a thousands separator (4,821)."""
    return f"{n:,}" if n >= 1000 and rng.random() < 0.35 else str(n)


def _expression(rng: random.Random, op: str, x: int, y: int) -> str:
    """x op y with a symbol or word for op, spaces around a symbol or not."""
    sym = rng.choice(SYMBOLS[op])
    if sym.isalpha() and len(sym) > 1:  # a word: always between spaces
        gap = (" ", " ")
    else:
        gap = rng.choices(((" ", " "), ("", ""), ("", " "), (" ", "")), weights=(5, 4, 1, 1))[0]
    return f"{_written(rng, x)}{gap[0]}{sym}{gap[1]}{_written(rng, y)}"


def _restyle(rng: random.Random, text: str) -> str:
    """Final punctuation and case as people type them: a sentence may end in ?, ., !, ?? or nothing (one ending
    in "=" or "= ?" stays), and some are all lower or upper case."""
    if not text.endswith(("=", "?")) or (text.endswith("?") and not text.endswith("= ?") and rng.random() < 0.3):
        text = text.rstrip("?") + rng.choices(PUNCTUATION, weights=(6, 3, 4, 1, 1, 1))[0]
    r = rng.random()
    return text.lower() if r < 0.2 else text.upper() if r < 0.27 else text


def phrase(rng: random.Random, op: str, a: int, b: int, word: bool = False,
           phrasing: str = "train", more_words: bool = False) -> tuple[str, str]:
    """The question (and for a word problem the thinking's first line) for a op b, in a random phrasing.

    phrasing "train" draws from the templates training uses, "held_out" from those it never sees. more_words
    (stage 2) adds MORE_WORD to the word problems and starts their thinking with SETUP.
    """
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    x, y = (b, a) if op == "×" and rng.random() < 0.3 else (a, b)  # "×": either factor first
    if word:
        if phrasing == "held_out":
            question, setup = rng.choice(HELD_OUT_WORD[op]), ""
        elif more_words:
            question = rng.choice([q for q, _ in TRAIN_WORD[op]] + list(MORE_WORD[op]))
            x, y = (a, b) if question.index("{a}") < question.index("{b}") else (b, a)  # as the question has them
            setup = SETUP[op].format(x=x, y=y, a=a, b=b)
        else:
            question, setup = rng.choice(TRAIN_WORD[op])
        fill = dict(a=_written(rng, a), b=_written(rng, b), name=rng.choice(NAMES), item=rng.choice(ITEMS))
        setup = setup.replace("{a}", str(a)).replace("{b}", str(b))  # the thinking writes plain numbers
        return _restyle(rng, question.format(**fill)), setup.format(**fill)
    expression, verbal = ((TRAIN_EXPRESSION, TRAIN_VERBAL) if phrasing == "train" else
                          (HELD_OUT_EXPRESSION, HELD_OUT_VERBAL))
    if rng.random() < 0.7:
        text = rng.choice(expression).format(e=_expression(rng, op, x, y))
    else:
        text = rng.choice(verbal[op]).format(a=_written(rng, x), b=_written(rng, y))
    return _restyle(rng, text), ""


KINDS = ("+", "-", "×", "word")


def draw(rng: random.Random, kind: str | None = None, digits: tuple[int, int] | None = None,
         held_out: bool = False, weights: tuple[float, ...] = (3, 3, 3, 2)) -> tuple[str, int, int, bool]:
    """(op, a, b, word) of a random problem; kind "+", "-", "×" or "word" (default: any, by `weights`); digits
    fixes the operands' lengths. held_out=False never returns an evaluation problem, held_out=True only those."""
    kind = kind or rng.choices(KINDS, weights=weights)[0]
    word = kind == "word"
    op = rng.choice(OPS) if word else kind
    while True:
        if digits:
            da, db = digits
        elif op == "×":  # a factor of 1 to 3 digits times one of 1 or 2 digits
            da, db = rng.choices((1, 2, 3), weights=(1, 2, 4))[0], rng.choice((1, 2))
        else:  # lengths 1 to 4, longer ones more often: they are the hard ones
            da, db = rng.choices((1, 2, 3, 4), weights=(1, 2, 3, 4), k=2)
        a, b = _number(rng, da), _number(rng, db)
        if op == "×" and rng.random() < 0.2 and not digits:
            b = rng.randint(2, 9)
        if (op == "-" and a < b) or (op == "×" and len(str(a)) < len(str(b))):
            a, b = b, a
        if is_held_out(op, a, b) == held_out:
            return op, a, b, word


def make_problem(rng: random.Random, kind: str | None = None, digits: tuple[int, int] | None = None,
                 held_out: bool = False, phrasing: str = "train", mix: "Mix | None" = None) -> Problem:
    """A random problem in a random phrasing (see draw and phrase), drawn as `mix` says (default: stage 1)."""
    mix = mix or Mix()
    op, a, b, word = draw(rng, kind, digits, held_out, mix.kinds)
    return Problem(op, a, b, *phrase(rng, op, a, b, word, phrasing, mix.more_words))


def _columns(op: str, a: int, b: int) -> tuple[list[str], int]:
    """Column lines for a + b, a - b (a >= b) or a × b (b one digit), right to left; and the result."""
    x_digits, y_digits = str(a), str(b)
    n = max(len(x_digits), len(y_digits)) if op != "×" else len(x_digits)
    lines, carry, so_far = [], 0, ""
    for i in range(n):
        x = int(x_digits[-1 - i]) if i < len(x_digits) else 0
        y = int(y_digits[-1 - i]) if i < len(y_digits) else 0
        head = f"{PLACES[i]}: "
        if op == "+":
            s = x + y + carry
            so_far = str(s % 10) + so_far
            lines.append(f"{head}{x}+{y}+{carry}={s}, carry {s // 10}, so far {so_far}")
            carry = s // 10
        elif op == "-":
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
            s = x * b + carry
            so_far = str(s % 10) + so_far
            lines.append(f"{head}{x}×{b}+{carry}={s}, carry {s // 10}, so far {so_far}")
            carry = s // 10
    if carry and op != "-":
        so_far = str(carry) + so_far
        lines.append(f"carry {carry} goes in front: {so_far}")
    return lines, int(so_far)


def trace(p: Problem) -> str:
    """The step-by-step thinking: one line per column, right to left, carrying the digits so far. A two-digit
    multiplier is the column method: a × ones digit, a × tens digit with a 0 behind, then their sum."""
    lines = [p.setup] if p.setup else []
    if p.op != "×" or p.b < 10:
        verb = {"+": "add", "-": "subtract", "×": "multiply digit by digit"}[p.op]
        lines.append(f"{p.expression}: {verb}, starting from the ones.")
        lines += _columns(p.op, p.a, p.b)[0]
    else:
        tens, ones = divmod(p.b, 10)
        lines.append(f"{p.expression}: {p.a} × {ones} plus {p.a} × {tens}0, starting from the ones.")
        lines.append(f"{p.a} × {ones}:")
        block, low = _columns("×", p.a, ones)
        lines += block
        lines.append(f"{p.a} × {tens}0 is {p.a} × {tens} with a 0 behind:")
        block, high = _columns("×", p.a, tens)
        lines += block
        lines.append(f"with the 0: {high * 10}")
        lines.append(f"{low} + {high * 10}: add, starting from the ones.")
        lines += _columns("+", low, high * 10)[0]
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
    kinds: tuple[float, ...] = (3, 3, 3, 2)  # weights of +, -, × and word problems
    more_words: bool = False  # word problems also in MORE_WORD's sentences, all starting with SETUP


# stage 1 trains from scratch; stage 2 continues from stage 1 with more word problems and multiplications, asked in
# more sentences (docs/demo.md gives the commands)
MIXES = {"stage1": Mix(), "stage2": Mix(kinds=(2, 2, 3, 3), more_words=True)}


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
        p = make_problem(rng, mix=mix)
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


CATEGORIES = {"add 4+4 digits": dict(kind="+", digits=(4, 4)), "sub 4-4 digits": dict(kind="-", digits=(4, 4)),
              "mul 3x1 digits": dict(kind="×", digits=(3, 1)), "mul 3x2 digits": dict(kind="×", digits=(3, 2)),
              "word problems": dict(kind="word"), "mixed": dict()}


def eval_problems(n_per_kind: int = 100, seed: int = 1234, phrasing: str = "train") -> list[tuple[str, Problem]]:
    """Held-out problems, by category (CATEGORIES: 4-digit + and -, 3-digit × 1 and 2 digits, word problems, and
    a mix of everything), asked in training's phrasings or in the held-out ones: the same problems either way."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    numbers, words = random.Random(seed), random.Random(seed * 31 + PHRASINGS.index(phrasing))
    out = []
    for name, kw in CATEGORIES.items():
        for _ in range(n_per_kind):
            op, a, b, word = draw(numbers, held_out=True, **kw)
            out.append((name, Problem(op, a, b, phrase(words, op, a, b, word, phrasing)[0])))
    return out
