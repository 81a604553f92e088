"""Token generation: prefill the prompt into a KV cache, then decode one token at a time.

The model only maps ids to logits; everything about choosing tokens lives here.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from .cache import KVCache

ENDOFTEXT, IM_END = 151643, 151645  # Qwen3's stop tokens (base and chat models)
# Qwen's published defaults per mode (thinking mode: greedy decoding is discouraged)
THINKING_DEFAULTS = dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING_DEFAULTS = dict(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)


def _number(name: str, x, hint: str) -> None:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a number ({hint}), got {type(x).__name__} {x!r}")
    if not math.isfinite(x):  # NaN passes every comparison below: NaN temperature would act greedy
        raise ValueError(f"{name} must be a finite number ({hint}), got {x}")


def _integer(name: str, x, hint: str, lo: int = 0, hi: int | None = None) -> None:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an integer ({hint}), got {type(x).__name__} {x!r}")
    if x < lo or (hi is not None and x > hi):
        raise ValueError(f"{name} must be an integer in [{lo}, {'inf' if hi is None else hi}] ({hint}), got {x}")


def check_sampling(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                   presence_penalty: float = 0.0, *, seed: int | None = None, max_new_tokens: int | None = None,
                   thinking_budget: int | None = None) -> None:
    """Reject settings that would silently sample from nothing (or from everything), before any work.

    Each error names the argument and its value: TypeError for the wrong kind (a float top_k), ValueError for a
    value out of range (NaN or a negative temperature). seed, max_new_tokens, thinking_budget: None = not given."""
    _number("temperature", temperature, "0 = greedy")
    _number("top_p", top_p, "1 = off")
    _number("min_p", min_p, "0 = off")
    _number("presence_penalty", presence_penalty, "Qwen suggests 0 to 1.5")
    _integer("top_k", top_k, "0 = off")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if not 0.0 <= min_p < 1.0:
        raise ValueError(f"min_p must be in [0, 1) (0 = off), got {min_p}")
    if presence_penalty < 0:
        raise ValueError(f"presence_penalty must be >= 0 (Qwen suggests 0 to 1.5), got {presence_penalty}")
    if seed is not None:  # torch's generators take 64 bits (a negative seed would wrap around silently)
        _integer("seed", seed, "None = not fixed", 0, 2**64 - 1)
    if max_new_tokens is not None:
        _integer("max_new_tokens", max_new_tokens, "tokens to generate at most")
    if thinking_budget is not None:
        _integer("thinking_budget", thinking_budget, "thinking tokens at most, None = unlimited")


def check_ids(input_ids, vocab_size: int, pad_id: int | None = None,
              generated: Sequence[Sequence[int]] | None = None) -> None:
    """Prompts (a (B, T) integer tensor or a list of non-empty lists of ints), pad_id (where it pads prompts of
    different lengths) and the `generated` ids must be token ids of the model (0 <= id < vocab_size). Otherwise
    the embedding fails deep inside (on a GPU as a device assert, which ends the process)."""
    def bad(name: str, value) -> ValueError:
        return ValueError(f"{name} holds {value}, which is not a token id of this model (0..{vocab_size - 1})")

    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got a {input_ids.dtype} tensor")
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ValueError(f"input_ids must be (batch, time), at least one token, got shape {tuple(input_ids.shape)}")
        lo, hi = int(input_ids.min()), int(input_ids.max())  # once per call, before any work
        if lo < 0 or hi >= vocab_size:
            raise bad("input_ids", lo if lo < 0 else hi)
    else:
        if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, Sequence) or not input_ids:
            raise TypeError(f"input_ids must be a (batch, time) tensor or a non-empty list of prompts (lists of "
                            f"token ids), got {type(input_ids).__name__}")
        for i, row in enumerate(input_ids):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not row:
                raise ValueError(f"input_ids[{i}] must be a non-empty list of token ids, got {row!r:.80}")
    rows = [] if isinstance(input_ids, torch.Tensor) else [(f"input_ids[{i}]", r) for i, r in enumerate(input_ids)]
    if pad_id is not None and len({len(r) for _, r in rows}) > 1:  # pad_id is fed to the model only as padding
        rows.append(("pad_id", [pad_id]))
    rows += [(f"generated[{i}]", r) for i, r in enumerate(generated or ())]
    for name, row in rows:
        for t in row:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise TypeError(f"{name} must hold integer token ids, got {type(t).__name__} {t!r}")
            if not 0 <= t < vocab_size:
                raise bad(name, t)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0, presence_penalty: float = 0.0, seen: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token of each row. logits (B, V) -> ids (B,). temperature 0 means greedy.

    Filters apply in the order transformers and vLLM use: temperature, top-k, top-p, min-p.
    seen (B, V): 1.0 where a token was already generated, for the presence penalty.
    """
    logits = logits.float()
    if presence_penalty and seen is not None:  # a flat penalty on every token already generated
        logits = logits - presence_penalty * seen
    if temperature <= 0:
        return logits.argmax(-1)
    # Work on the candidates only, best first: with top-k that is k of 151,936 tokens, so the softmax, the
    # cumulative sum and the random draw below are cheap; top-p alone needs the whole vocabulary sorted.
    idx = None
    if top_k and top_k < logits.shape[-1]:
        logits, idx = logits.topk(top_k, dim=-1)  # (B, k)
    elif top_p < 1.0:
        logits, idx = logits.sort(-1, descending=True)  # (B, V)
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)  # mass before it already reached top_p
    if min_p > 0.0:  # drop tokens less likely than min_p times the best one
        probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    # argmax(p / Exp(1)) draws from p (the exponential race) with no host sync, unlike multinomial
    q = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_(min=1e-30)  # 0/0 would be NaN
    choice = (probs / q).argmax(-1)  # (B,)
    return choice if idx is None else idx.gather(-1, choice[:, None])[:, 0]


class Session:
    """A batch of sequences being generated: the model, its KV cache, and how far each row has got.

    feed(ids) appends tokens to every row and returns the logits after the last one. Rows are aligned
    on the right: `pad` (B,) counts the left-padding tokens of each row, which are never attended to.
    """

    # The model returns logits for every position: (T, 151936) floats is 2.5 GB for a 4k-token prompt. Feeding long
    # prompts in chunks bounds that; the cache makes chunked prefill compute exactly what one pass would.
    prefill_chunk = 512

    def __init__(self, model, batch_size: int, max_len: int, pad: torch.Tensor | None = None):
        p = next(model.parameters())
        self.model, self.device = model, p.device
        self.cache = KVCache(model.config, batch_size, max_len, device=p.device, dtype=p.dtype)
        self.pad = pad
        self.pos = 0  # next cache slot

    @torch.no_grad()
    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> logits (B, V) of the last position."""
        T = ids.shape[1]
        assert T > 0, "feed() needs at least one token"
        if self.pos + T > self.cache.max_len:
            raise ValueError(f"sequence of {self.pos + T} tokens exceeds this session's {self.cache.max_len} slots")
        ids = ids.to(self.device)
        for i in range(0, T, self.prefill_chunk):
            chunk = ids[:, i:i + self.prefill_chunk]
            input_pos = torch.arange(self.pos, self.pos + chunk.shape[1], device=self.device)
            logits = self.model(chunk, cache=self.cache, input_pos=input_pos, pad=self.pad)
            self.pos += chunk.shape[1]
        return logits[:, -1]


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align prompts of different lengths: ids (B, T_max) and pad counts (B,)."""
    assert prompts and all(len(p) for p in prompts), "every prompt needs at least one token"
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (T - len(p)) + list(p) for p in prompts])
    return ids, torch.tensor([T - len(p) for p in prompts])


def as_batch(input_ids: torch.Tensor | list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A (B, T) tensor as it is, or a list of prompts left-padded: ids (B, T) and pad counts (B,) or None."""
    if isinstance(input_ids, torch.Tensor):
        assert input_ids.dim() == 2, f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}"
        return input_ids, None
    ids, pad = left_pad(input_ids, pad_id)
    return ids, (pad if pad.any() else None)


def check_context(model, prompt_len: int, max_new_tokens: int) -> int:
    """Fail before any work on a prompt past the context; return how many new tokens fit."""
    ctx = model.config.context_length
    if prompt_len >= ctx:
        raise ValueError(f"the prompt has {prompt_len} tokens; the model's context is {ctx} tokens")
    return min(max_new_tokens, ctx - prompt_len)


def mark_generated(seen: torch.Tensor, generated: Sequence[Sequence[int]]) -> None:
    """seen (B, V) = 1 at each row's already generated ids."""
    assert len(generated) == seen.shape[0], f"generated has {len(generated)} rows for a batch of {seen.shape[0]}"
    for row, ids in zip(seen, generated):
        row[torch.tensor(list(ids), dtype=torch.long, device=seen.device)] = 1.0


@torch.no_grad()
def generate(model, input_ids: torch.Tensor | list[list[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
             presence_penalty: float = 0.0, seed: int | None = None,
             stop_ids: tuple[int, ...] = (IM_END, ENDOFTEXT), pad_id: int = ENDOFTEXT,
             on_token: Callable[[torch.Tensor], None] | None = None,
             vocab_limit: int | None = None, fast: bool | None = None,
             generated: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """Continue each prompt; returns ids (B, T + new), greedy when temperature is 0.

    input_ids: a (B, T) tensor, or a list of prompts of different lengths (left-padded with pad_id).
    A row that emits a stop token is finished: it keeps the stop token, then pad_id fills the rest.
    on_token: called with each step's new ids (B,) as they come, finished rows showing pad_id (for streaming).
    vocab_limit: sample only ids below it, e.g. len(tokenizer): Qwen3's embedding has 151,936 rows for a vocabulary
    of 151,669, and the padding rows are no token at all (a trained model never picks them; a random one may).
    generated: per row, ids that count as already generated for the presence penalty (a reply continued in parts).
    fast: decode with minqwen3.fast (compiled, CUDA graphs; same tokens, on_token called in bursts of 16).
    Default: on a CUDA device. The model's first fast call compiles for ~30 s; later calls reuse it.
    """
    check_ids(input_ids, model.config.vocab_size, pad_id, generated)  # all input checks before any work
    check_sampling(temperature, top_k, top_p, min_p, presence_penalty, seed=seed, max_new_tokens=max_new_tokens)
    ids, pad = as_batch(input_ids, pad_id)
    B, T = ids.shape
    max_new_tokens = check_context(model, T, max_new_tokens)
    if next(model.parameters()).is_cuda if fast is None else fast:
        from .fast import fast_generator  # fast imports this module
        return fast_generator(model, T + max_new_tokens).generate(
            input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            presence_penalty=presence_penalty, seed=seed, stop_ids=stop_ids, pad_id=pad_id, on_token=on_token,
            vocab_limit=vocab_limit, generated=generated)
    session = Session(model, B, T + max_new_tokens, None if pad is None else pad.to(next(model.parameters()).device))
    gen = None
    if seed is not None:
        gen = torch.Generator(session.device).manual_seed(seed)
    V = model.config.vocab_size
    seen = torch.zeros(B, V, device=session.device) if presence_penalty else None
    if seen is not None and generated is not None:
        mark_generated(seen, generated)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=session.device)
    done = torch.zeros(B, dtype=torch.bool, device=session.device)
    out = [ids.to(session.device)]
    logits = session.feed(ids)
    for _ in range(max_new_tokens):
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        tok = sample(logits, temperature, top_k, top_p, min_p, presence_penalty, seen, gen)  # (B,)
        out.append(torch.where(done, pad_id, tok)[:, None])
        if on_token is not None:
            on_token(out[-1][:, 0])
        done |= torch.isin(tok, stops)
        if done.all():
            break
        if seen is not None:
            seen[torch.arange(B), tok] = 1.0
        logits = session.feed(tok[:, None])
    return torch.cat(out, dim=1)
