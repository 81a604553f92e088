"""Exercise 7b · The thinking budget: the text fed when the reasoning runs out of budget.
Read notebooks/07_generation_and_thinking_budget.ipynb first ("The thinking budget, step by step").

Check your work:  pytest exercises/test_assistant.py --impl student
(the reference is minqwen3.assistant.early_stop_ids; minqwen3.assistant.chat runs the budget around it)
"""
from __future__ import annotations

from collections.abc import Sequence

# the Qwen3 tech report's early-stop text (section 4.3), verbatim: the "." after </think> included
EARLY_STOP = ("Considering the limited time by the user, I have to give the solution based on the thinking "
              "directly now.\n</think>.\n\n")


def early_stop_ids(tokenizer, before: Sequence[int]) -> list[int]:
    """The ids fed when the thinking budget runs out right after the ids `before` (the prompt and the cut thought).

    tokenizer: a minqwen3.tokenizer.Tokenizer (encode(text) -> list[int], decode(ids) -> str).
    before: the ids so far, a sequence of int.
    Returns a list of int: the ids of EARLY_STOP preceded by just enough "\n" that the sentence starts after a
    blank line: "\n\n" when the text so far ends in no newline, "\n" when it ends in one, nothing when it already
    ends in a blank line (two or more). Its </think> must be the control token (id 151668), one id, not the
    characters "</think>" spelled out in ordinary tokens.
    """
    raise NotImplementedError("exercise 7b: early_stop_ids")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# - Count the newlines that end the text so far: decode the last few ids (a token can hold several "\n", and
#   "\n\n" may be one token or two), then len(tail) - len(tail.rstrip("\n")).
# - Two tokens hold at least two characters, so decoding the last two ids is enough.
# - Encode the newlines and EARLY_STOP together, in one call: the tokenizer then merges "\n\n" into one token
#   as the model would have written it.
# - The Tokenizer's encode turns "<think>"/"</think>" into their control tokens by default (allow_special=True).
