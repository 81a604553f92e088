"""Token generation: sampling, and the one decode loop (prefill the prompt into a KV cache, then one token at a time).

The model maps ids to logits; choosing tokens lives here. How the pieces fit:

- generate() is the loop, and the only one. It checks its arguments once, prefills the prompt, samples the first
  token, then runs one step per further token: feed the last token, sample the next. No step runs after the last
  token is sampled, and the prefill applies the LM head to the last position only.
- A step is the model's own forward, piece by piece: Qwen3.inputs (embedding, RoPE tables, mask), each decoder
  layer with its own KVCache, Qwen3.head (final norm and LM head on the last position), then sample() and
  record(), which writes the token into the output and advances the position. The step reads and writes device
  tensors only (a Decoder's buffers), never the host.
- A Decoder holds what the loop works on: the per-layer caches, the step's buffers, and the step. Made with
  compile=True it compiles the step's pieces once (one graph per layer kind, shared by every layer and every
  cache length) and, on CUDA, captures the step as one CUDA graph per cache-prefix length: the same loop then
  replays a graph where it would call the step. On one GPU the prompt goes the same way: its layers compiled for
  any length, and a prompt of up to 1,024 tokens replayed as a graph of its length rounded up to 64 tokens. That is
  the whole of the fast path (benchmarks in docs/benchmarks.md; notebook 09 says why it is fast).
- Compiled state lives in the Decoder: pass your own (generate(decoder=Decoder(model))), or let generate() use the
  model's on a CUDA device, made on first use and kept as model.fast_decoder (`del model.fast_decoder` frees it).
"""
from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from . import matvec, pdl, stack, warmstart
from .cache import KVCache, make_cache
from .config import NON_THINKING_DEFAULTS, THINKING_DEFAULTS  # noqa: F401 (sampling's defaults, for callers)
from .tokenizer import ENDOFTEXT, IM_END, token_id

STOP_IDS = (IM_END, ENDOFTEXT)
RECOMPILE_LIMIT = 64  # compiled graphs of one function a process keeps (Decoder: run_layer's, shared by all)
_PREFILL = os.environ.get("MINQWEN3_PREFILL", "compiled")
# MINQWEN3_PREFILL=eager: a compiled Decoder feeds the prompt through the eager layers, as before session 13
PREFILL_COMPILED = _PREFILL != "eager"
# A compiled prompt of up to PROMPT_GRAPH_MAX tokens a row is right-padded to a multiple of PROMPT_GRAPH_STEP and,
# with CUDA graphs, replayed as one, a graph per such length (MINQWEN3_PREFILL=direct: as it is, from Python)
PROMPT_GRAPH_STEP, PROMPT_GRAPH_MAX = 64, 1024
PROMPT_GRAPHS = _PREFILL != "direct"


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


def check_ids(input_ids, vocab_size: int, pad_id: int,
              generated: Sequence[Sequence[int]] | None = None) -> None:
    """Prompts (a (B, T) integer tensor or a list of non-empty lists of ints), pad_id (where it pads prompts of
    different lengths) and the `generated` ids must be token ids of the model (0 <= id < vocab_size). Otherwise
    the embedding fails deep inside (on a GPU as a device assert, which ends the process)."""
    def bad(name: str, value) -> ValueError:
        return ValueError(f"{name} holds {value}, which is not a token id of this model (0..{vocab_size - 1})")

    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype not in (torch.int64, torch.int32):  # what the embedding takes
            raise TypeError(f"input_ids must hold integer token ids (an int64 or int32 tensor), got a "
                            f"{input_ids.dtype} tensor")
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
    if pad_id is None or isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral):
        raise TypeError(f"pad_id must be a token id (it fills finished rows and left-pads shorter prompts), got "
                        f"{type(pad_id).__name__} {pad_id!r}")
    if len({len(r) for _, r in rows}) > 1:  # pad_id is fed to the model only as padding
        rows.append(("pad_id", [pad_id]))
    if generated is not None:
        n = len(input_ids)
        if isinstance(generated, (str, bytes)) or not hasattr(generated, "__len__"):
            raise TypeError(f"generated must hold one list of ids per prompt, got {type(generated).__name__}")
        if len(generated) != n:
            raise ValueError(f"generated must hold one list of ids per prompt ({n}), got {len(generated)}")
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
    # the best logit moved to 0 first: a tiny temperature then sends the others to -inf, not the best to +inf
    # (inf / inf in the softmax: NaN, and argmax would pick token 0)
    probs = ((logits - logits.amax(-1, keepdim=True)) / temperature).softmax(-1)
    if top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)  # mass before it already reached top_p
    if min_p > 0.0:  # drop tokens less likely than min_p times the best one
        probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    # argmax(p / Exp(1)) draws from p (the exponential race) with no host sync, unlike multinomial
    q = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_(min=1e-30)  # 0/0 would be NaN
    choice = (probs / q).argmax(-1)  # (B,)
    return choice if idx is None else idx.gather(-1, choice[:, None])[:, 0]


def check_stop_ids(stop_ids) -> tuple[int, ...]:
    """stop_ids (a list, set, tuple, array or integer tensor of ids) as a tuple of ints; a bare int or a string is
    an error naming it. (An id the model cannot emit is allowed: the default, Qwen's, on a test model of a few
    hundred ids.)"""
    if isinstance(stop_ids, torch.Tensor):
        stop_ids = stop_ids.flatten().tolist() if stop_ids.dim() else [stop_ids]
    if isinstance(stop_ids, (str, bytes)) or not isinstance(stop_ids, Iterable):
        raise TypeError(f"stop_ids must be a list of token ids, got {type(stop_ids).__name__} {stop_ids!r:.40}")
    out = []
    for t in stop_ids:
        try:
            out.append(token_id(t))  # ints, numpy ints, 0-d integer tensors
        except TypeError:
            raise TypeError(f"stop_ids must hold integer token ids, got {type(t).__name__} {t!r}") from None
    return tuple(out)


def as_batch(input_ids: torch.Tensor | list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A (B, T) tensor as it is, or a list of prompts right-aligned: ids (B, T) left-padded with pad_id, and the
    pad counts (B,) (None when no row is padded)."""
    if isinstance(input_ids, torch.Tensor):
        assert input_ids.dim() == 2, f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}"
        return input_ids, None
    assert input_ids and all(len(p) for p in input_ids), "every prompt needs at least one token"
    T = max(len(p) for p in input_ids)
    pad = torch.tensor([T - len(p) for p in input_ids])
    ids = torch.tensor([[pad_id] * (T - len(p)) + list(p) for p in input_ids])
    return ids, (pad if pad.any() else None)


class ContextError(ValueError):
    """A prompt that leaves no room in the model's context for a new token."""


def check_context(model, prompt_len: int, max_new_tokens: int) -> int:
    """Fail before any work on a prompt past the context; return how many new tokens fit."""
    _integer("max_new_tokens", max_new_tokens, "tokens to generate at most")
    ctx = model.config.context_length
    if prompt_len >= ctx:
        raise ContextError(f"the prompt has {prompt_len} tokens; the model's context is {ctx} tokens")
    return min(max_new_tokens, ctx - prompt_len)


def prefix_lengths(max_len: int, smallest: int = 256) -> list[int]:
    """The cache prefixes a decode step may read: smallest, 2x, 4x, ... and max_len itself."""
    out = []
    n = smallest
    while n < max_len:
        out.append(n)
        n *= 2
    return out + [max_len]


def run_layer(layer, x, cos, sin, mask, cache: KVCache, input_pos) -> torch.Tensor:
    return layer(x, cos, sin, mask, cache, input_pos)[0]  # the router logits are for training


def prefill_layer(layer, x, cos, sin, mask, cache: KVCache, input_pos) -> torch.Tensor:
    """run_layer for a prompt: a code object of its own, so its graphs (any number of tokens) and the step's
    (one token a row) are compiled and counted apart."""
    return layer(x, cos, sin, mask, cache, input_pos)[0]


def record(tok, out, n, done, seen, last, pos, stops, pad_id: int) -> None:
    """Write the sampled tokens (B,) as out[:, n] (pad_id for rows already finished), mark rows that stopped and
    tokens seen, make tok the next input and advance n and pos: all on the device."""
    out.index_copy_(1, n, torch.where(done, pad_id, tok)[:, None])
    done |= torch.isin(tok, stops)
    seen.scatter_(1, tok[:, None], 1.0)
    last.copy_(tok[:, None])
    n += 1
    pos += 1


class Decoder:
    """The decode loop's working state for one model: per-layer KV caches of max_len slots, the step's buffers
    (the token fed next, its slot, the output, done flags, tokens seen) and the step itself.

    compile (default: on CUDA) compiles the step's pieces with torch.compile (backend; combo_kernels, Inductor's,
    defaults to on for hidden sizes up to 2048, where it measured faster); cuda_graphs (default: on CUDA) captures
    the step once per cache prefix (prefix_lengths(max_len, smallest_prefix)). stacked (default: compiled on CUDA,
    unless MINQWEN3_STACK=0): a call of 2 rows or more (of one row too where matvec.py's kernel applies the RMSNorm
    on the way into the stacked products, _normed_one_row) stacks each layer's q|k|v and gate|up weights in place
    (stack.py; from then on the weights stay stacked) and its steps project with the stacks. Use it through
    generate(decoder=).

    compile_prefill (default: where the step is compiled, on one CUDA device, unless MINQWEN3_PREFILL=eager; for an
    MoE model only where its prompt path is one grouped GEMM, Hopper and bf16, not a per-token gather of the experts'
    weights) compiles the layers for the prompt too, once per layer kind and batch size for every prompt length
    (its token count is a symbol), with Inductor's defaults: eagerly, a prompt's ~45 kernels a layer are launched
    one by one from Python, and for a short prompt that launching, not the GPU, is most of the first token's wait.
    A compiled prompt of up to PROMPT_GRAPH_MAX tokens is right-padded to a multiple of PROMPT_GRAPH_STEP, and
    with CUDA graphs captured once per such length: one replay, where launching its kernels took the host ~0.5 ms
    a layer. The first token comes from the last real position; the padding's keys and values land in cache
    slots after the prompt, which no query sees (causal, and each decode step masks the slots past its own and
    writes its own before it reads). The largest captured prompt's activations stay in the graphs' memory pool.

    Each start checks the model's parameters and buffers (their data pointers): if anything replaced them since
    the last call (model.to(dtype), load_state_dict(assign=True)), it stacks again where a stack went stale and
    drops the caches and captured graphs, which read the old addresses, making them anew.
    """

    def __init__(self, model, max_len: int = 4096, *, compile: bool | None = None, cuda_graphs: bool | None = None,
                 backend: str = "inductor", smallest_prefix: int = 256, combo_kernels: bool | None = None,
                 stacked: bool | None = None, compile_prefill: bool | None = None):
        p = next(model.parameters())
        self.model, self.device = model, p.device
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {self.device}")
        self.max_len = min(max_len, model.config.context_length)
        self.lengths = prefix_lengths(self.max_len, smallest_prefix)
        self.compiled = on_cuda if compile is None else compile
        self.pdl = False  # whether the step's kernels of ours launch with PDL (set below where it compiles)
        self.stacked = stack.enabled and self.compiled and on_cuda if stacked is None else stacked
        self.weights: list[tuple] = []  # what the caches and graphs were made for (_weights())
        self.stacks_for: list[tuple] = []  # the weights as stack.stack() last left them
        self.inputs, self.run_layer, self.head, self.record = model.inputs, run_layer, model.head, record
        if self.compiled:
            # Regional compilation: every layer, and every prefix length, shares one compiled graph per layer kind
            # (dense, MoE), so compile time does not grow with depth. Coordinate-descent tuning is what makes
            # Inductor turn each matrix-vector product into a reduction that streams the weights; combo kernels
            # launch a graph's independent kernels as one, which pays where matrices are small.
            options = {"coordinate_descent_tuning": True} if backend == "inductor" else None
            # those graphs live on run_layer's code, one per layer kind, model shape, dtype and batch size, for every
            # Decoder of the process: Dynamo's default of 8 made the ninth (a notebook's models, the GPU tests) an
            # error under fullgraph
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            warmstart.wait()  # the imports a background thread may be doing (chat starts it while loading)
            if backend == "inductor":
                warmstart.use_compile_cache()
                warmstart.keep_tuned_configs()  # torch 2.11 would tune cached kernels again (warmstart.py)
                warmstart.compile_in_process_if_cached(model.config, p.dtype, self.device)
            if options is not None and (model.config.hidden_size <= 2048 if combo_kernels is None else combo_kernels):
                options["combo_kernels"] = True
            if options is not None:  # kernels that start early (pdl.py)
                self.pdl, inductors = pdl.decoder_plan(self.device)
                if inductors:
                    options["triton.enable_pdl"] = True  # Inductor's kernels chained as ours are
            self.inputs, self.run_layer, self.head, self.record = (
                torch.compile(f, fullgraph=True, backend=backend, options=options)
                for f in (model.inputs, run_layer, model.head, record))
        # the prompt's compiled layer function (compile_prefill None: used where _prefill_compiles() at each start,
        # as the model's dtype may change; self.prefill: this call's, None = eager, the model's own layers)
        self.prefill_choice, self.prefill = compile_prefill, None
        self.prefill_fn = (torch.compile(prefill_layer, fullgraph=True, backend=backend)
                           if self.compiled and compile_prefill is not False else None)
        self.generator = torch.Generator(self.device)
        self.stops: dict[tuple[int, ...], torch.Tensor] = {}
        self.batch = 0
        self.setup_s = 0.0  # seconds spent compiling and capturing, summed (a compiled prompt's first call whole)
        self.prompt_kinds: set[tuple] = set()  # (batch, padded, more than one token, right-padded): compiled for
        self.prompt = None  # the right-padded prompt's buffer (_allocate)

    def _prefill_compiles(self) -> bool:
        """compile_prefill's default (the class docstring says when, and why not elsewhere)."""
        from .moe import _grouped_mm_ok
        world = getattr(getattr(self.model, "plan", None), "world", 1)  # a split model: its prompt stays eager
        return (PREFILL_COMPILED and self.device.type == "cuda" and world == 1
                and (not self.model.config.is_moe or _grouped_mm_ok(next(self.model.parameters()))))

    def _allocate(self, B: int) -> None:
        """The caches and the step's buffers, once per batch size: a graph replays these exact addresses."""
        dev, cfg = self.device, self.model.config
        # one slot more than the longest prefix: every prefix is then a view with a gap after it, so the compiled
        # layer sees one memory layout for all lengths (a prefix that filled the buffer would be contiguous)
        self.cache = make_cache(self.model, B, self.max_len + 1)
        self.prefixes = {n: [c.prefix(n) for c in self.cache] for n in self.lengths}
        if self.compiled:  # the prefix length is a symbol to torch.compile: one graph for every length
            for c in (c for caches in self.prefixes.values() for c in caches):
                torch._dynamo.maybe_mark_dynamic(c.k, 2)
                torch._dynamo.maybe_mark_dynamic(c.v, 2)
        self.tok = torch.zeros(B, 1, dtype=torch.long, device=dev)  # the token fed next
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # its cache slot
        self.pad = torch.zeros(B, dtype=torch.long, device=dev)  # left padding per row
        self.out = torch.zeros(B, self.max_len, dtype=torch.long, device=dev)  # the new tokens
        self.n = torch.zeros(1, dtype=torch.long, device=dev)  # how many are in out
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.seen = torch.zeros(B, cfg.vocab_size, device=dev)  # for the presence penalty
        self.graphs, self.batch, self.prompt_kinds, self.prompt = {}, B, set(), None
        if self.prefill is not None and PROMPT_GRAPHS:  # a right-padded prompt's buffers (PROMPT_GRAPH_MAX)
            n = min(PROMPT_GRAPH_MAX, self.max_len)
            self.prompt = torch.zeros(B, n, dtype=torch.long, device=dev)  # right-padded ids
            self.last = torch.zeros(1, dtype=torch.long, device=dev)  # the prompt's last real position
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    def _weights(self) -> list[tuple]:
        """Where each parameter and buffer lives, as a captured graph reads it: address, dtype, shape, strides."""
        return [(t.data_ptr(), t.device, t.dtype, t.shape, t.stride())
                for t in (*self.model.parameters(), *self.model.buffers())]

    def _state(self) -> list[torch.Tensor]:
        return [self.tok, self.pos, self.n, self.done, self.seen]

    def forward_last(self, ids: torch.Tensor, caches: list[KVCache], input_pos: torch.Tensor,
                     pad: torch.Tensor | None, fns: tuple | None = None, last: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Qwen3.forward piece by piece -> float logits (B, V) of the last position (last (1,): of that one). fns:
        the pieces (inputs, run_layer, head), the model's own by default, or compiled ones (the step's; the
        prompt's)."""
        inputs, layer_fn, head = fns or (self.model.inputs, run_layer, self.model.head)
        x, cos, sin, mask = inputs(ids, input_pos, caches, pad)
        prompt = fns is not None and ids.shape[1] > 1  # compiled for a prompt: one graph for every length T
        if prompt:
            for t, dims in ((cos, (2,)), (sin, (2,)), (input_pos, (0,)), (mask, (2, 3)),
                            *((kv, (2,)) for c in caches for kv in (c.k, c.v))):  # the caches' T slots
                for d in dims if t is not None else ():
                    torch._dynamo.maybe_mark_dynamic(t, d)
        elif fns is not None and mask is not None:
            torch._dynamo.maybe_mark_dynamic(mask, 3)  # (B|1, 1, 1, S): the prefix length, like the cache's
        for layer, cache in zip(self.model.model.layers, caches):
            if prompt:  # each layer's input (B, T, C): the last one's output is a new tensor
                torch._dynamo.maybe_mark_dynamic(x, 1)
            x = layer_fn(layer, x, cos, sin, mask, cache, input_pos)
        return head(x if last is None else x.index_select(1, last))

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample (B,) from logits (B, V) with this call's settings."""
        limit, *settings = self.sampling
        if limit is not None:  # ids from limit up are no token (the embedding's padding rows)
            logits[:, limit:] = float("-inf")
        return sample(logits, *settings, seen=self.seen, generator=self.gen)

    def start(self, ids: torch.Tensor, pad: torch.Tensor | None, new: int, sampling: tuple,
              stop_ids: tuple[int, ...], pad_id: int, seed: int | None,
              generated: Sequence[Sequence[int]] | None) -> None:
        """Reset the state, feed the prompt ids (B, T) into slots 0..T-1 (compile_prefill: compiled) and record
        the first new token; capture the graphs the next new - 1 steps need, before any of them runs.
        sampling: (vocab_limit, temperature, top_k, top_p, min_p, presence_penalty)."""
        B, T = ids.shape
        if T + new - 1 > self.max_len:
            raise ValueError(f"{T} prompt + {new} new tokens need {T + new - 1} cache slots; this Decoder has "
                             f"{self.max_len} (Decoder(model, max_len=...))")
        self.prefill = (self.prefill_fn if self.prefill_fn is not None
                        and (self.prefill_choice or self.prefill_choice is None and self._prefill_compiles()) else None)
        weights = self._weights()
        # else the step never reads the stacks, so it runs on the weights as loaded; unless a parameter (or a module)
        # was replaced since stack() last looked, the stacks stand (its walk over the layers costs a prompt ~1 ms)
        if self._reads_stacks(B) and weights != self.stacks_for:
            if stack.stack(self.model):  # stacked again where a parameter's data was replaced
                weights = self._weights()
            self.stacks_for = weights
        if weights != self.weights:  # new parameters (or the first call): caches in their dtype, graphs recaptured
            self.weights, self.batch = weights, 0
        if (self.prefill is not None and PROMPT_GRAPHS) != (self.prompt is not None):  # the prompt's plan changed
            self.batch = 0
        if B != self.batch:
            self._allocate(B)
        self.sampling, self.pad_id = sampling, pad_id
        # one generator for the object's life: a captured graph draws from the generator it was captured with
        self.gen = None if seed is None else self.generator.manual_seed(seed)
        # a graph reads the stop ids from the tensor it was captured with: keep one tensor per set of ids alive
        # (a fresh tensor per call would leave the graph reading freed memory on the next call)
        if stop_ids not in self.stops:
            self.stops[stop_ids] = torch.tensor(stop_ids, dtype=torch.long, device=self.device)
        self.stop = self.stops[stop_ids]
        for t in self._state():
            t.zero_()
        if generated is not None:  # ids that count as generated already, for the presence penalty
            assert len(generated) == B, f"generated has {len(generated)} rows for a batch of {B}"
            for row, done in zip(self.seen, generated):
                row[torch.tensor(list(done), dtype=torch.long, device=self.device)] = 1.0
        self.pad.copy_(pad if pad is not None else torch.zeros_like(self.pad))
        # a compiled step always takes the pad buffer (one graph for every batch); an eager one only if there is
        # padding, so that its mask is the short causal one
        self.step_pad = self.pad if pad is not None or self.compiled else None
        key, padded, L, last = (sampling, stop_ids, pad_id, seed is not None), pad is not None, T, None
        if self.prompt is not None and 1 < T <= self.prompt.shape[1]:  # right-padded to L
            L = min(-(-T // PROMPT_GRAPH_STEP) * PROMPT_GRAPH_STEP, self.prompt.shape[1])
            self.prompt[:, :T].copy_(ids)
            self.prompt[:, T:L].zero_()  # any token id: the padding's keys and values are never attended to
            self.last.fill_(T - 1)
            ids, last = self.prompt[:, :L], self.last
        run = lambda: self._prompt(ids, L, padded, last)  # noqa: E731
        if last is not None and self.cuda_graphs:
            self._graph(("prompt", L, padded, *key), run).replay()
        else:
            t0, kind = time.perf_counter(), (B, padded, T > 1, last is not None)
            run()
            if self.prefill is not None and kind not in self.prompt_kinds:  # compiled now: counted whole as setup
                self.prompt_kinds.add(kind)
                self.setup_s += time.perf_counter() - t0
        self.pos.fill_(T)
        self.plen = [next(n for n in self.lengths if n > T + i) for i in range(new - 1)]  # step i's prefix
        self.step_fns = {n: (self._graph(("step", n, *key), lambda n=n: self._step(n)).replay if self.cuda_graphs
                             else lambda n=n: self._step(n)) for n in dict.fromkeys(self.plen)}

    def step(self, i: int) -> None:
        """Step i: feed the token at slot T + i and record the next one, reading the smallest prefix holding it."""
        self.step_fns[self.plen[i]]()

    def _prompt(self, ids: torch.Tensor, L: int, padded: bool, last: torch.Tensor | None) -> None:
        """The prompt ids (B, L) into slots 0..L-1 (through the compiled layers where compile_prefill) and the first
        token, from the last position or from position last (1,) of a right-padded prompt (what start() captures:
        ids and last are then the buffers the graph reads)."""
        fns = None if self.prefill is None else (self.model.inputs, self.prefill, self.model.head)
        pos = torch.arange(L, device=self.device)  # in a captured graph, a kernel that the replay runs again
        with stack.using(fns is not None and self._reads_stacks(self.batch)):  # stacked: 4 GEMMs a layer, not 7
            logits = self.forward_last(ids, [c.prefix(L) for c in self.cache], pos, self.pad if padded else None, fns,
                                       last)
        record(self._pick(logits), self.out, self.n, self.done, self.seen, self.tok, self.pos, self.stop, self.pad_id)

    def _step(self, n: int) -> None:
        fns = self.inputs, self.run_layer, self.head
        with stack.using(self._reads_stacks(self.batch)), pdl.scope(self.pdl):  # the stacks start() checked
            tok = self._pick(self.forward_last(self.tok, self.prefixes[n], self.pos, self.step_pad, fns))
        self.record(tok, self.out, self.n, self.done, self.seen, self.tok, self.pos, self.stop, self.pad_id)

    def _reads_stacks(self, rows: int) -> bool:
        """Whether a step of `rows` rows projects with the stacks: at 2 rows or more, where each projection is a GEMM
        of its own and one over the stack saves launches; at one row Inductor already reads x once for q, k, v (and
        for gate, up) in one reduction, and the stack's output slices cost a copy each (docs/benchmarks.md, session
        8), unless matvec.py's kernel norms and projects them (its output's slices are views: _normed_one_row)."""
        return self.stacked and (rows > 1 or self._normed_one_row())

    def _normed_one_row(self) -> bool:
        """Whether a one-row step reads the stacks, for matvec.py's kernel to apply the RMSNorms on the way into
        q|k|v and gate|up (matvec.normed_linear): where that measured faster than Inductor's reductions (its
        statistics kernel and tuned products), on a small model (hidden size up to 2048, as combo kernels: there the
        launches dominate; Qwen3-0.6B -12%) and on a split one (parallel.py: both ranks run one kernel, not each its
        own tuning; Qwen3-32B on two GPUs -11%), not on Qwen3-8B (+6-8%) or Qwen3-32B on one GPU (even), nor on an
        MoE model (Qwen3-30B-A3B: 3.253 against 2.936 ms, q|k|v of a shape the kernel's table lacks, session 9);
        MINQWEN3_NORMED=all: on every model."""
        world = getattr(getattr(self.model, "plan", None), "world", 1)
        return (matvec.normed and matvec.triton is not None and self.device.type == "cuda"
                and (matvec.normed_one_row_always or not self.model.config.is_moe
                     and (self.model.config.hidden_size <= 2048 or world > 1)))

    def _graph(self, key: tuple, run: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """run() (a step over one prefix, or a prompt of one length) as a CUDA graph, captured on the first use of
        key (compiling first if need be)."""
        if key in self.graphs:
            return self.graphs[key]
        t0 = time.perf_counter()
        saved = [t.clone() for t in self._state()]
        rng = self.gen.get_state() if self.gen is not None else None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the capture: compile, autotune, allocate workspaces
            for _ in range(2):
                run()
                for t, s in zip(self._state(), saved):
                    t.copy_(s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.gen is not None:
            graph.register_generator_state(self.gen)  # replays then draw fresh numbers from gen
            self.gen.set_state(rng)
        with torch.cuda.graph(graph, pool=self.pool):
            run()  # recorded, not run: the state is untouched
        if self.gen is not None:  # as if nothing had been drawn: the same seed gives the same tokens, captured or not
            self.gen.set_state(rng)
        torch.cuda.synchronize()
        self.setup_s += time.perf_counter() - t0
        if key[0] == "step" and self.compiled and not any(k[0] == "step" for k in self.graphs):
            # the first step graph of these weights: its kernels are in the compile cache now
            warmstart.remember_compiled(self.model.config, next(self.model.parameters()).dtype, self.device)
        self.graphs[key] = graph
        return graph


def fast_decoder(model, slots: int) -> Decoder:
    """The model's own Decoder (compiled on CUDA) with at least `slots` cache slots, made on first use and kept as
    model.fast_decoder: a plain attribute, not a submodule, so state_dict() ignores it, and it goes when the model
    goes. `del model.fast_decoder` frees its cache and graphs sooner."""
    dec = model.__dict__.get("fast_decoder")
    if dec is None or dec.max_len < slots:
        n = 4096
        while n < slots:
            n *= 2
        dec = model.fast_decoder = Decoder(model, max_len=min(n, model.config.context_length))
    return dec


@torch.no_grad()
def generate(model, input_ids: torch.Tensor | list[list[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
             presence_penalty: float = 0.0, seed: int | None = None, stop_ids: Sequence[int] = STOP_IDS,
             pad_id: int = ENDOFTEXT, on_token: Callable[[torch.Tensor], None] | None = None,
             vocab_limit: int | None = None, generated: Sequence[Sequence[int]] | None = None,
             fast: bool | None = None, decoder: Decoder | None = None) -> torch.Tensor:
    """Continue each prompt; returns ids (B, T + new), greedy when temperature is 0.

    input_ids: a (B, T) tensor, or a list of prompts of different lengths (left-padded with pad_id).
    A row that emits a stop token is finished: it keeps the stop token, then pad_id fills the rest.
    on_token: called with each step's new ids (B,) as they come, finished rows showing pad_id (for streaming).
    vocab_limit: sample only ids below it, e.g. len(tokenizer): Qwen3's embedding has 151,936 rows for a vocabulary
    of 151,669, and the padding rows are no token at all (a trained model never picks them; a random one may).
    generated: per row, ids that count as already generated for the presence penalty (a reply continued in parts).
    fast: decode with the model's compiled Decoder (torch.compile, CUDA graphs; the same tokens, on_token called in
    bursts of 16). Default: on a CUDA device. fast=True elsewhere keeps one Decoder for the model (a preallocated
    cache, reused across calls) but compiles nothing: the compiled step is CUDA's. The first fast call compiles for
    ~30 s (seconds in a later process: the compile caches are kept, warmstart.py); later calls reuse it.
    decoder: decode with this Decoder instead (fast is then ignored).
    """
    check_ids(input_ids, model.config.vocab_size, pad_id, generated)  # all input checks before any work
    check_sampling(temperature, top_k, top_p, min_p, presence_penalty, seed=seed, max_new_tokens=max_new_tokens)
    stop_ids = check_stop_ids(stop_ids)
    if vocab_limit is not None:
        _integer("vocab_limit", vocab_limit, "sample only ids below it", 1, model.config.vocab_size)
    if decoder is not None and decoder.model is not model:
        raise ValueError("decoder was made for another model: it would decode with that model's weights")
    ids, pad = as_batch(input_ids, pad_id)
    B, T = ids.shape
    N = check_context(model, T, max_new_tokens)
    if decoder is None and (next(model.parameters()).is_cuda if fast is None else fast):
        decoder = fast_decoder(model, T + N)
    elif decoder is None:  # eager, and a cache of just the slots this call needs
        decoder = Decoder(model, T + N, compile=False, cuda_graphs=False)
    ids = ids.to(decoder.device)
    if N < 1:
        return ids
    decoder.start(ids, None if pad is None else pad.to(decoder.device), N,
                  (vocab_limit, temperature, top_k, top_p, min_p, presence_penalty), stop_ids, pad_id, seed, generated)
    # Replaying graphs, the host looks at the GPU only every 16 tokens (one wait each time): for the done flags and
    # to hand tokens to on_token. Otherwise after every token.
    every = 16 if decoder.cuda_graphs else 1
    sent = 0  # tokens handed to on_token

    def send(upto: int) -> None:
        nonlocal sent
        if on_token is not None and upto > sent:
            for col in decoder.out[:, sent:upto].cpu().T:  # one copy per look
                on_token(col)
        sent = upto

    for i in range(N - 1):  # step i feeds the token at slot T + i: none after the last token is sampled
        if i % every == 0 and (stop_ids or on_token is not None):
            if stop_ids and decoder.done.all():
                break
            send(i + 1)  # the first token and i steps, all before the step where every row finished
        decoder.step(i)
    out = decoder.out[:, :N]
    if stop_ids:  # stop after the step where every row is done
        finished = torch.isin(out, decoder.stop).cumsum(1).gt(0).all(0)  # (N,)
        if finished.any():
            out = out[:, :int(finished.nonzero()[0]) + 1]
    send(out.shape[1])
    return torch.cat([ids, out], dim=1)
