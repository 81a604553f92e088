"""Exercise 7 · sampling: the filters against transformers' logits warpers, the draws against the exact distribution,
the presence penalty written out. Never against minqwen3 itself."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

REFERENCE = "generation"  # the package keeps sample() in minqwen3/generation.py
# a small vocabulary with a long tail: probabilities about .38 .23 .14 .09 .05 .03 ... at temperature 1
LOGITS = torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.2, 0.0, -0.5, -1.0, -2.0, -4.0])
N = 6000  # draws per distribution: a frequency is then within 0.02 of its probability (3.5 sigma at p = 0.5)


def oracle(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, presence_penalty=0.0, seen=None):
    """The exact distribution: transformers' warpers, in the order transformers and vLLM apply them."""
    x = logits.float()[None].clone()
    if presence_penalty and seen is not None:
        x = x - presence_penalty * seen[None]  # vLLM's and OpenAI's definition: a flat penalty, once per token
    x = TemperatureLogitsWarper(temperature)(None, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(None, x)
    if min_p > 0.0:
        x = MinPLogitsWarper(min_p)(None, x)
    return x.softmax(-1)[0]


def frequencies(impl, logits, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    ids = impl.sample(logits.expand(N, -1), generator=g, **kw)
    assert ids.shape == (N,) and ids.dtype == torch.long, "sample returns (B,) int64 ids"
    return torch.bincount(ids, minlength=logits.shape[-1]).float() / N


def test_greedy_is_the_argmax_of_each_row(impl):
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    ids = impl.sample(logits, temperature=0.0)
    assert ids.shape == (5,) and torch.equal(ids, logits.argmax(-1))
    assert torch.equal(impl.sample(logits), logits.argmax(-1)), "temperature defaults to 0: greedy"


SETTINGS = {
    "temperature 1": dict(temperature=1.0),
    "temperature 0.5": dict(temperature=0.5),
    "temperature 2": dict(temperature=2.0),
    "top-k 3": dict(temperature=1.0, top_k=3),
    "top-p 0.5 keeps the crossing token": dict(temperature=1.0, top_p=0.5),
    "top-p 0.8": dict(temperature=1.0, top_p=0.8),
    "min-p 0.2": dict(temperature=1.0, min_p=0.2),
    "temperature before top-p": dict(temperature=2.5, top_p=0.6),
    "temperature before min-p": dict(temperature=0.4, min_p=0.05),
    "top-k before top-p": dict(temperature=1.0, top_k=2, top_p=0.7),
    "qwen thinking": dict(temperature=0.6, top_k=20, top_p=0.95),
    "qwen non-thinking": dict(temperature=0.7, top_k=4, top_p=0.8, min_p=0.1),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_draws_follow_the_filtered_distribution(impl, name):
    kw = SETTINGS[name]
    p = oracle(LOGITS, **kw)
    freq = frequencies(impl, LOGITS, **kw)
    kept, drawn = p > 0, freq > 0
    assert torch.equal(drawn & ~kept, torch.zeros_like(kept)), f"drew filtered-out tokens {(drawn & ~kept).nonzero()}"
    assert torch.equal(kept & (p > 0.01), drawn & (p > 0.01)), f"never drew kept tokens {(kept & ~drawn).nonzero()}"
    assert (freq - p).abs().max() < 0.02, f"frequencies {freq} vs probabilities {p}"


def test_presence_penalty_greedy(impl):
    """The penalty applies in greedy mode too: a token already generated loses its lead if it was smaller."""
    logits = torch.tensor([[2.0, 1.5, 0.0, -1.0], [2.0, 0.5, 0.0, -1.0]])
    seen = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    ids = impl.sample(logits, temperature=0.0, presence_penalty=1.0, seen=seen)
    assert ids.tolist() == [1, 0], "2 - 1 < 1.5 in row 0; 2 - 1 > 0.5 in row 1"
    assert impl.sample(logits, temperature=0.0, presence_penalty=0.0, seen=seen).tolist() == [0, 0]


def test_presence_penalty_is_a_flat_subtraction(impl):
    """Subtract the penalty once from each seen token's logit (not a division, not a count): checked on negative
    logits too, where a multiplicative (repetition-penalty style) rule goes the other way."""
    logits = torch.tensor([1.0, 0.5, -0.5, -1.0, -1.5, 0.0])
    seen = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    kw = dict(temperature=1.0, presence_penalty=0.8, seen=seen)
    p = oracle(logits, **kw)
    freq = frequencies(impl, logits, seen=seen.expand(N, -1), temperature=1.0, presence_penalty=0.8)
    assert (freq - p).abs().max() < 0.02, f"frequencies {freq} vs probabilities {p}"


def test_rows_are_independent(impl):
    """Each row has its own distribution and its own filter thresholds."""
    logits = torch.stack([LOGITS, LOGITS.flip(0)])  # row 1 prefers the last token
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([impl.sample(logits, temperature=1.0, top_k=2, generator=g) for _ in range(300)])  # (300, 2)
    assert set(ids[:, 0].tolist()) == {0, 1} and set(ids[:, 1].tolist()) == {11, 10}


def test_min_p_compares_with_each_rows_own_largest(impl):
    """min-p's threshold is min_p times the largest probability of the row itself: here row 0's largest (~0.99)
    times 0.3 would drop row 1's third token (probability 0.2), whose own threshold is 0.3 * 0.5 = 0.15."""
    logits = torch.stack([torch.tensor([5.0, 0.0, 0.0]), torch.tensor([0.5, 0.3, 0.2]).log()])
    ids = impl.sample(logits.repeat(N, 1), temperature=1.0, min_p=0.3, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ids[1::2], minlength=3).float() / N  # row 1's draws
    p = oracle(logits[1], temperature=1.0, min_p=0.3)
    assert (freq - p).abs().max() < 0.02, f"row 1 frequencies {freq} vs probabilities {p}"


def test_the_generator_makes_draws_reproducible(impl):
    logits = LOGITS.expand(64, -1)
    a = impl.sample(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = impl.sample(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


PERM = torch.tensor([5, 0, 9, 2, 11, 7, 1, 4, 10, 3, 8, 6])
FILTERS = {"top-p on unsorted logits": (LOGITS[PERM], dict(temperature=1.0, top_p=0.5)),
            "min-p after top-p": (LOGITS, dict(temperature=1.0, top_p=0.5, min_p=0.3))}


@pytest.mark.parametrize("name", FILTERS)
def test_filters_on_unsorted_logits_and_in_order(impl, name):
    """top-p sorts first (these logits are not in order); min-p applies after top-p (the other order differs by 0.38
    in probability here)."""
    logits, kw = FILTERS[name]
    assert (frequencies(impl, logits, **kw) - oracle(logits, **kw)).abs().max() < 0.02


def test_presence_penalty_before_temperature(impl):
    """The penalty is subtracted from the logits before the temperature divides them (at temperature 1 the two
    orders agree, which the other tests use)."""
    logits = torch.tensor([1.0, 0.5, -0.5, -1.0, -1.5, 0.0])
    seen = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    p = oracle(logits, temperature=0.5, presence_penalty=0.8, seen=seen)
    freq = frequencies(impl, logits, seen=seen.expand(N, -1), temperature=0.5, presence_penalty=0.8)
    assert (freq - p).abs().max() < 0.02
