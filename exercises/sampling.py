"""Exercise 7 · Choosing the next token: temperature, top-k, top-p, min-p and the presence penalty.
Read notebooks/07_generation_and_thinking_budget.ipynb first.

Check your work:  pytest exercises/test_sampling.py --impl student
(the reference is minqwen3.generation.sample)
"""
from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0, presence_penalty: float = 0.0, seen: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token of each row. logits (B, V) -> ids (B,), int64.

    What to compute, per row:
    - presence penalty: if presence_penalty > 0 and seen (B, V) is given (1.0 where the token was already
      generated, else 0.0), subtract presence_penalty from those logits. It applies in greedy mode too.
    - temperature 0: greedy, the argmax of the (penalised) logits.
    - otherwise draw from p = softmax(logits / temperature), after these filters, in this order, each one
      working on the distribution the previous one left (renormalised):
        top_k > 0: keep the top_k most likely tokens (all of them when top_k >= V);
        top_p < 1: keep the smallest set of most likely tokens whose probability sums to at least top_p
                   (the token that crosses top_p is kept);
        min_p > 0: keep the tokens whose probability is at least min_p times the largest one.
      Draw with `generator` (a torch.Generator, or None for the global one), so a seed reproduces the draws.
    Settings that are off: top_k 0, top_p 1.0, min_p 0.0, presence_penalty 0.0.
    """
    raise NotImplementedError("exercise 7: sample")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# - Work in float32 (logits.float()); a filtered-out token gets probability 0 (or logit -inf before the softmax).
# - top-k: logits.topk(k) gives values and indices; sampling among the k and mapping back through the indices
#   is cheaper than masking 151,936 entries.
# - top-p: sort descending, cumsum; a token is dropped when the mass *before* it (cumsum - p) already reaches
#   top_p. Undo the sort, or sample in sorted order and map back.
# - min-p: compare with min_p * probs.max(-1, keepdim=True).
# - Drawing: torch.multinomial(probs, 1, generator=generator) works; minqwen3 uses the exponential race
#   argmax(p / Exp(1)), which needs no host synchronisation.
