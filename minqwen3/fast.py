"""Fast generation on one GPU: a static KV cache, the decoder layer compiled once, each decode step a CUDA graph.

At batch 1 a decode step multiplies every weight by one vector: 2 FLOPs per 2-byte weight, a hundred times too
few to keep the matrix units busy. The floor is (bytes of weights read) / (memory bandwidth): 0.3 ms for
Qwen3-0.6B on an H200. Eager PyTorch spends 70 times that issuing its ~2,800 small operations from Python.
Three things remove the overhead:

- torch.compile fuses each layer's small ops (norms, RoPE, SiLU, residual adds) into a few Triton kernels, and
  with coordinate-descent tuning turns every matrix-vector product into a reduction tuned to stream the weights
  (for MoE, a reduction that loads the chosen experts' rows in place). The decoder layer is compiled once and
  reused by every layer, so compile time does not grow with depth.
- A CUDA graph records one whole step, embedding to sampled token, and replays it as one launch. A graph replays
  fixed addresses, so everything a step touches lives in preallocated buffers: the KV cache, the current token,
  its position, the output row. The position advances on the GPU, inside the graph: the host never waits.
- Decode attention is one Triton kernel (flash_decode.py) that writes the new key and value into the cache and
  attends: under torch.compile, attention spelled as library calls received a copy of the cache prefix.
- The static cache is read through prefixes of a few lengths (256, 512, 1024, ...): a step attends over the
  smallest prefix that holds its position. One graph per length, all captured before decoding starts.

Prefill stays eager: a few large matmuls and flash attention are already near the matmul rate, and only the last
position goes through the LM head. On CPU nothing is compiled or captured; the same steps run eagerly.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from .cache import KVCache
from .generate import (ENDOFTEXT, IM_END, as_batch, check_context, check_ids, check_sampling, mark_generated,
                       sample)


class LayerCache:
    """One layer's slice of a KVCache. update() ignores the layer index, so all layers trace the same graph."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v  # (B, H_kv, S, D)

    @property
    def max_len(self) -> int:  # read off the tensor, so torch.compile sees a symbol, not a constant
        return self.k.shape[2]

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k, self.v

    def update(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


# The pieces of a forward pass, as free functions so that each can be compiled on its own.
def embed(model, ids: torch.Tensor, input_pos: torch.Tensor, pad: torch.Tensor | None):
    """Token embeddings (B, T, C) and the RoPE tables for slots input_pos (T,), shifted past left padding."""
    x = model.model.embed_tokens(ids)
    pos = input_pos[None, :] if pad is None else (input_pos[None, :] - pad[:, None]).clamp(min=0)  # (B|1, T)
    return (x, *model.model.rotary_emb(pos, x.dtype))


def run_layer(layer, x, cos, sin, mask, cache, input_pos) -> torch.Tensor:
    return layer(x, cos, sin, mask, cache, input_pos)[0]  # drop the router logits


def head(model, x: torch.Tensor) -> torch.Tensor:
    """Float logits (B, V) of the last position only: a 4096-token prompt's others would be 2.5 GB."""
    return model.lm_head(model.model.norm(x[:, -1])).float()


def decode_inputs(model, tok, pos, pad, cache: LayerCache):
    """Embedding, RoPE and mask (B, 1, 1, S) for one new token per row at slot pos (1,)."""
    return (*embed(model, tok, pos, pad), model._mask(pos, cache, pad))


def emit(tok, out, n, done, seen, last, pos, stops, pad_id: int) -> None:
    """Record sampled tokens (B,) as generate() does (finished rows get pad_id) and advance n and pos."""
    out.index_copy_(1, n, torch.where(done, pad_id, tok)[:, None])
    done |= torch.isin(tok, stops)
    seen.scatter_(1, tok[:, None], 1.0)
    last.copy_(tok[:, None])
    n += 1
    pos += 1


def forward_last(model, ids: torch.Tensor, caches: list[LayerCache], input_pos: torch.Tensor,
                 mask: torch.Tensor | None, pad: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3.forward with one cache per layer -> float logits (B, V) of the last position.

    mask None means causal over the cache prefix (SDPA's flash path): right for a prompt fed into an empty cache.
    """
    x, cos, sin = embed(model, ids, input_pos, pad)
    for layer, cache in zip(model.model.layers, caches):
        x = run_layer(layer, x, cos, sin, mask, cache, input_pos)
    return head(model, x)


def prefix_lengths(max_len: int, smallest: int = 256) -> list[int]:
    """The cache prefixes a decode step may read: smallest, 2x, 4x, ... and max_len itself."""
    out = []
    n = smallest
    while n < max_len:
        out.append(n)
        n *= 2
    return out + [max_len]


class FastGenerator:
    """generate() for one model and a fixed cache size, made fast on a GPU (see the module docstring).

    Same arguments and results as minqwen3.generate(): greedy tokens are the eager path's, up to the rounding of
    fused kernels. compile and cuda_graphs default to True on CUDA and False elsewhere; backend is torch.compile's;
    combo_kernels (Inductor's) defaults to on for hidden sizes up to 2048, where it measured faster.
    """

    def __init__(self, model, max_len: int = 4096, *, compile: bool | None = None, cuda_graphs: bool | None = None,
                 backend: str = "inductor", smallest_prefix: int = 256, combo_kernels: bool | None = None):
        p = next(model.parameters())
        self.model, self.device, self.dtype = model, p.device, p.dtype
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {self.device}")
        self.max_len = min(max_len, model.config.context_length)
        self.lengths = prefix_lengths(self.max_len, smallest_prefix)
        self.inputs, self.run_layer, self.head, self.emit = decode_inputs, run_layer, head, emit
        if on_cuda if compile is None else compile:
            # "Regional" compilation: every layer, and every prefix length, shares one compiled graph per layer
            # kind (dense, MoE), so compile time does not grow with depth. Coordinate-descent tuning is what
            # makes Inductor turn each matrix-vector product into a reduction that streams the weights.
            options = {"coordinate_descent_tuning": True} if backend == "inductor" else None
            # Combo kernels launch a graph's independent kernels (k and v projections, q/k norms, ...) as one.
            # Where a layer's matrices are small, launches are what costs, and they help (on the H200: 0.6B and
            # 30B-A3B decode 13% and 7% faster); on 8B's large ones they slowed decoding by 6% (benchmarks.md).
            if options is not None and (model.config.hidden_size <= 2048 if combo_kernels is None else combo_kernels):
                options["combo_kernels"] = True
            self.inputs, self.run_layer, self.head, self.emit = (
                torch.compile(f, fullgraph=True, backend=backend, options=options)
                for f in (decode_inputs, run_layer, head, emit))
            # one guard set per model shape and backend; the default limit of 8 is reached by a few models
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.generator = torch.Generator(self.device)
        self.stops: dict[tuple[int, ...], torch.Tensor] = {}
        self.batch = 0
        self.setup_s = 0.0  # seconds spent compiling and capturing, summed

    # ---------------------------------------------------------------- buffers
    def _allocate(self, B: int) -> None:
        """The cache and the step's state, once per batch size: a graph replays these exact addresses."""
        dev, cfg = self.device, self.model.config
        # one slot more than the longest prefix: every prefix is then a view with a gap after it, so the compiled
        # layer sees one memory layout for all lengths (a prefix that filled the buffer would be contiguous)
        self.cache = KVCache(cfg, B, self.max_len + 1, device=dev, dtype=self.dtype)
        self.layers = {n: self._layer_caches(self.cache.prefix(n), dynamic=True) for n in self.lengths}
        self.tok = torch.zeros(B, 1, dtype=torch.long, device=dev)  # the token fed next
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # its cache slot
        self.pad = torch.zeros(B, dtype=torch.long, device=dev)  # left padding per row
        self.out = torch.zeros(B, self.max_len, dtype=torch.long, device=dev)  # the new tokens
        self.n = torch.zeros(1, dtype=torch.long, device=dev)  # how many are in out
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.seen = torch.zeros(B, cfg.vocab_size, device=dev)  # for the presence penalty
        self.graphs, self.batch = {}, B
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    @staticmethod
    def _layer_caches(cache: KVCache, dynamic: bool = False) -> list[LayerCache]:
        if dynamic:  # let torch.compile treat the prefix length as a symbol: one graph for every length
            for t in cache.k + cache.v:
                torch._dynamo.maybe_mark_dynamic(t, 2)
        return [LayerCache(k, v) for k, v in zip(cache.k, cache.v)]

    def _state(self) -> list[torch.Tensor]:
        return [self.tok, self.pos, self.n, self.done, self.seen]

    # ---------------------------------------------------------------- the two phases
    def _prefill(self, ids: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """Feed the whole prompt into slots 0..T-1, eagerly -> logits (B, V) after its last token."""
        T = ids.shape[1]
        input_pos = torch.arange(T, device=self.device)
        prefix = self.cache.prefix(T)
        mask = None if pad is None else self.model._mask(input_pos, prefix, pad)
        return forward_last(self.model, ids, self._layer_caches(prefix), input_pos, mask, pad)

    def _pick(self, logits: torch.Tensor, sampling: tuple, gen) -> torch.Tensor:
        """Sample (B,) from logits (B, V); sampling is (vocab_limit, temperature, top_k, top_p, min_p, presence)."""
        limit, *settings = sampling
        if limit is not None:  # ids from limit up are no token (the embedding's padding rows)
            logits[:, limit:] = float("-inf")
        return sample(logits, *settings, seen=self.seen, generator=gen)

    def _step(self, n: int, sampling: tuple, stops: torch.Tensor, pad_id: int, gen) -> None:
        """One decode step over cache prefix n, state in, state out: no host sync, so it can be a graph."""
        layers = self.layers[n]
        x, cos, sin, mask = self.inputs(self.model, self.tok, self.pos, self.pad, layers[0])
        torch._dynamo.maybe_mark_dynamic(mask, 3)  # (B, 1, 1, n): the prefix length, like the cache's
        for layer, cache in zip(self.model.model.layers, layers):
            x = self.run_layer(layer, x, cos, sin, mask, cache, self.pos)
        tok = self._pick(self.head(self.model, x), sampling, gen)
        self.emit(tok, self.out, self.n, self.done, self.seen, self.tok, self.pos, stops, pad_id)

    def _graph(self, n: int, sampling: tuple, stops: torch.Tensor, pad_id: int, gen) -> torch.cuda.CUDAGraph:
        """The step over prefix n as a CUDA graph, captured on first use (compiling first if need be)."""
        key = (n, sampling, tuple(stops.tolist()), pad_id, gen is not None)
        if key in self.graphs:
            return self.graphs[key]
        t0 = time.perf_counter()
        saved = [t.clone() for t in self._state()]
        rng = gen.get_state() if gen is not None else None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the capture: compile, autotune, allocate workspaces
            for _ in range(2):
                self._step(n, sampling, stops, pad_id, gen)
                for t, s in zip(self._state(), saved):
                    t.copy_(s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if gen is not None:
            graph.register_generator_state(gen)  # replays then draw fresh numbers from gen
            gen.set_state(rng)
        with torch.cuda.graph(graph, pool=self.pool):
            self._step(n, sampling, stops, pad_id, gen)  # recorded, not run: the state is untouched
        if gen is not None:  # as if nothing had been drawn: the same seed gives the same tokens, captured or not
            gen.set_state(rng)
        torch.cuda.synchronize()
        self.setup_s += time.perf_counter() - t0
        self.graphs[key] = graph
        return graph

    # ---------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | list[list[int]], max_new_tokens: int, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 presence_penalty: float = 0.0, seed: int | None = None,
                 stop_ids: tuple[int, ...] = (IM_END, ENDOFTEXT), pad_id: int = ENDOFTEXT,
                 on_token: Callable[[torch.Tensor], None] | None = None, vocab_limit: int | None = None,
                 generated: Sequence[Sequence[int]] | None = None, check_every: int = 16) -> torch.Tensor:
        """Continue each prompt; returns ids (B, T + new) exactly as minqwen3.generate() does.

        With stop_ids, the host looks at the GPU's `done` flags every check_every tokens (one sync each time).
        on_token gets each step's ids (B,) as generate() gives them, but in bursts: at those looks, and at the end.
        """
        check_ids(input_ids, self.model.config.vocab_size, pad_id, generated)
        check_sampling(temperature, top_k, top_p, min_p, presence_penalty, seed=seed, max_new_tokens=max_new_tokens)
        ids, pad = as_batch(input_ids, pad_id)
        B, T = ids.shape
        N = check_context(self.model, T, max_new_tokens)
        if N < 1:
            return ids.to(self.device)
        if T + N - 1 > self.max_len:
            raise ValueError(f"{T} prompt + {N} new tokens need {T + N - 1} cache slots; this FastGenerator "
                             f"has {self.max_len} (FastGenerator(model, max_len=...))")
        if B != self.batch:
            self._allocate(B)
        ids = ids.to(self.device)
        pad = None if pad is None else pad.to(self.device)
        sampling = (vocab_limit, temperature, top_k, top_p, min_p, presence_penalty)
        # one generator for the object's life: a captured graph draws from the generator it was captured with
        gen = None if seed is None else self.generator.manual_seed(seed)
        # a graph reads the stop ids from the tensor it was captured with: keep one tensor per set of ids alive
        # (a fresh tensor per call would leave the graph reading freed memory on the next call)
        if tuple(stop_ids) not in self.stops:
            self.stops[tuple(stop_ids)] = torch.tensor(stop_ids, dtype=torch.long, device=self.device)
        stops = self.stops[tuple(stop_ids)]
        for t in self._state():
            t.zero_()
        if generated is not None:
            mark_generated(self.seen, generated)
        self.pad.copy_(pad if pad is not None else torch.zeros_like(self.pad))

        first = self._pick(self._prefill(ids, pad), sampling, gen)
        emit(first, self.out, self.n, self.done, self.seen, self.tok, self.pos, stops, pad_id)
        self.pos.fill_(T)
        # step i feeds the token at slot T + i and reads the smallest prefix holding it
        plen = [next(n for n in self.lengths if n > T + i) for i in range(N - 1)]
        if self.cuda_graphs:
            graphs = {n: self._graph(n, sampling, stops, pad_id, gen) for n in dict.fromkeys(plen)}
        sent = 0  # tokens handed to on_token

        def send(upto: int) -> None:
            nonlocal sent
            if on_token is not None and upto > sent:
                for col in self.out[:, sent:upto].cpu().T:  # one copy per burst
                    on_token(col)
            sent = upto

        for i, n in enumerate(plen):
            if i % check_every == 0 and (stop_ids or on_token is not None):
                if stop_ids and self.done.all():
                    break
                send(i + 1)  # the first token and i steps, all before the step where every row finished
            if self.cuda_graphs:
                graphs[n].replay()
            else:
                self._step(n, sampling, stops, pad_id, gen)
        out = self.out[:, :N]
        if stop_ids:  # generate() stops after the step where every row is done
            finished = torch.isin(out, stops).cumsum(1).gt(0).all(0)  # (N,)
            if finished.any():
                out = out[:, :int(finished.nonzero()[0]) + 1]
        send(out.shape[1])
        return torch.cat([ids, out], dim=1)


def fast_generator(model, slots: int) -> FastGenerator:
    """The model's FastGenerator with at least `slots` cache slots, kept on the model (compiling and capturing
    happen once, then every call of generate() on the GPU reuses them; it goes when the model goes)."""
    fast = model.__dict__.get("_fast_generator")  # a plain attribute, not a submodule: state_dict() ignores it
    if fast is None or fast.max_len < slots:
        n = 4096
        while n < slots:
            n *= 2
        fast = model.__dict__["_fast_generator"] = FastGenerator(model, max_len=min(n, model.config.context_length))
    return fast
