"""python -m minqwen3 bench: generation speed against the machine's own ceilings, and against transformers.

Decoding one token at batch 1 reads every weight once, so its floor is (bytes of weights read) / (memory
bandwidth). Prefill multiplies the weights by thousands of tokens at once, so its ceiling is the matmul rate.
Both ceilings are measured here, in the same run, rather than taken from a datasheet.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import pdl, stack
from .config import Qwen3Config, count_params
from .generation import Decoder, generate
from .model import random_model

COMPARE = ("transformers", "transformers-static")  # eager with its default cache; static cache + torch.compile


# ---------------------------------------------------------------- ceilings
def one_line(e: BaseException, width: int = 200) -> str:
    """An exception as one line of a table: its type and the first line of its message (which may be empty)."""
    return f"{type(e).__name__}: {next(iter(str(e).splitlines()), '')[:width]}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int = 1) -> float:
    """Median wall-clock seconds of fn() over repeats, the device drained before and after each."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read plus bytes written."""
    nbytes = nbytes or (2**31 if device.type == "cuda" else 2**28)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)  # random, never zeros
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * nbytes / _time(lambda: [dst.copy_(src) for _ in range(10)], device, 3) * 10


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """FLOP/s of an n x n x n matrix product on random data."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n**3 * 10 / _time(lambda: [a @ b for _ in range(10)], device, 3)


def decode_bytes(config: Qwen3Config, dtype: torch.dtype, experts: float | None = None) -> int:
    """Weight bytes one decode step reads: active parameters, less the embedding table (only one row is
    read) unless the LM head shares it. experts: how many distinct experts a step reads per MoE layer (a batch's
    rows route to different ones; routed_experts measures it); default top-k, as at batch 1."""
    c = config
    _, active = count_params(c)
    if not c.tie_word_embeddings:
        active -= c.vocab_size * c.hidden_size
    if experts is not None and c.num_experts:
        moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
        active += round(moe_layers * (experts - c.num_experts_per_tok) * 3 * c.hidden_size * c.moe_intermediate_size)
    return active * dtype.itemsize


@torch.no_grad()
def routed_experts(model, ids: torch.Tensor, prompt_len: int) -> float | None:
    """How many distinct experts one decode step of the batch reads per MoE layer, on average over the layers and
    the steps: the union of the rows' top-k. ids (B, T): the prompts (prompt_len tokens) and what was generated;
    decode steps fed positions prompt_len .. T-2 (the last token is sampled, never fed). The router's choices
    are recomputed in one pass over ids; None for a dense model."""
    cfg = model.config
    if not cfg.num_experts or ids.shape[1] - 1 <= prompt_len:
        return None
    B, T = ids.shape[0], ids.shape[1] - 1
    _, router = model.hidden_states(ids[:, :T])  # per MoE layer (B*T, E)
    per_layer = []
    for logits in router:
        idx = logits.view(B, T, -1)[:, prompt_len:].topk(cfg.num_experts_per_tok, dim=-1).indices  # (B, n, k)
        n = idx.shape[1]
        hit = torch.zeros(n, cfg.num_experts, dtype=torch.bool, device=idx.device)
        hit.scatter_(1, idx.transpose(0, 1).reshape(n, -1), True)  # (n, E): experts any row chose at step i
        per_layer.append(hit.sum(1).float().mean())
    return float(torch.stack(per_layer).mean())


def prefill_flops(config: Qwen3Config, T: int) -> float:
    """Matmul FLOPs of a T-token prefill from an empty cache (LM head on the last position only)."""
    c = config
    _, active = count_params(c)
    emb = c.vocab_size * c.hidden_size
    norms = c.num_hidden_layers * (2 * c.hidden_size + 2 * c.head_dim) + c.hidden_size  # scales, not matmuls
    per_token = active - norms - emb * (1 if c.tie_word_embeddings else 2)  # weights each token multiplies
    attention = 2 * T * T * c.num_attention_heads * c.head_dim * c.num_hidden_layers  # QK^T and PV, causal half
    return 2.0 * per_token * T + attention + 2.0 * emb


# ---------------------------------------------------------------- models
def transformers_twin(model: Qwen3):
    """The same model in transformers, sharing every weight tensor with `model` (nothing is copied for good).

    transformers stores each MoE layer's gate and up projections as one (E, 2I, H) tensor: it is built once,
    and minqwen3's gate_proj and up_proj become views of its two halves.
    """
    import transformers
    cfg = model.config
    d = {k: v for k, v in cfg.to_dict().items()
         if v is not None and k not in ("model_type", "torch_dtype", "architectures")}
    p = next(model.parameters())
    hf_cfg = transformers.AutoConfig.for_model(cfg.model_type, **d)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=p.dtype)
    ours = dict(model.named_parameters(remove_duplicate=False))
    state = {}
    for name in hf.state_dict():
        if name in ours:
            state[name] = ours[name]
        elif name.endswith("experts.gate_up_proj"):
            ex = model.get_submodule(name.removesuffix(".gate_up_proj"))
            both = torch.cat([ex.gate_proj, ex.up_proj], dim=1)  # (E, 2I, H)
            I = ex.gate_proj.shape[1]
            ex.gate_proj, ex.up_proj = torch.nn.Parameter(both[:, :I], False), torch.nn.Parameter(both[:, I:], False)
            state[name] = both
        elif name.endswith("experts.down_proj"):
            state[name] = model.get_submodule(name.removesuffix(".down_proj")).down_proj
        else:
            raise KeyError(f"transformers' {name} has no counterpart in minqwen3")
    hf.load_state_dict(state, assign=True, strict=True)
    for mod_name, mod in list(hf.named_modules()):  # computed buffers (RoPE frequencies) are still on meta
        if any(b.is_meta for b in mod.buffers(recurse=False)):
            parent, _, attr = mod_name.rpartition(".")
            with torch.device(p.device):
                setattr(hf.get_submodule(parent), attr, type(mod)(hf.config))
    hf.generation_config.eos_token_id = None  # random weights: always generate every token asked for
    hf.generation_config.pad_token_id = 0
    return hf.eval()


# ---------------------------------------------------------------- one implementation
def _agree(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many tokens agree before the first difference."""
    return int((a.cpu() == b.cpu()).cumprod(-1).sum())


def measure(impls: list[tuple], prompt: torch.Tensor, new: int, long_prompt: torch.Tensor | None,
            device: torch.device, repeats: int) -> list[dict]:
    """impls: (name, gen_fn, warm_new, every_round, prefill), gen_fn(ids, n) -> ids (B, T + n). Times generating
    `new` tokens and 1 token (decode = the difference), and 1 token after long_prompt where prefill is set. After a
    warm-up each, the implementations take turns, `repeats` rounds (those with every_round False are timed in the
    first round only), and the best time of each counts: alternating, a machine shared with other jobs slows all
    of them alike."""
    runs, timed = [], []
    for name, fn, warm_new, every_round, prefill in impls:
        _log(name)
        try:  # one implementation failing must not lose the others' numbers
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            fn(prompt, warm_new)  # compile, capture, autotune, allocate
            _sync(device)
            r = dict(impl=name, warmup_s=time.perf_counter() - t, tokens=fn(prompt, new)[:, prompt.shape[1]:],
                     new=[], one=[], prefill=[])
            if device.type == "cuda":
                r["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            timed.append((r, fn, every_round, prefill and long_prompt is not None))
        except Exception as e:  # report it in the table and carry on: in one process
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise  # a rank that skipped on would meet its peers' collectives out of step (a hang, or wrong sums)
            r = dict(impl=name, error=one_line(e))
            _log(f"{name} failed: {r['error']}")
        runs.append(r)
    for i in range(repeats):
        for r, fn, every_round, prefill in timed:
            if i == 0 or every_round:
                r["new"].append(_time(lambda: fn(prompt, new), device))
                r["one"].append(_time(lambda: fn(prompt, 1), device))
                if prefill:
                    r["prefill"].append(_time(lambda: fn(long_prompt, 1), device))
    for r, *_ in timed:
        t_new, t_one, prefill = min(r.pop("new")), min(r.pop("one")), r.pop("prefill")
        r.update(tok_s=prompt.shape[0] * new / t_new, decode_ms=1e3 * (t_new - t_one) / (new - 1),
                 first_ms=1e3 * t_one)
        if prefill:
            r["prefill_s"] = min(prefill)
    return runs


def load_model(model_arg: str, device: torch.device, dtype: torch.dtype, seed: int = 0, plan=None):
    """(model, source): a checkpoint folder, or random weights in an official model's shapes; under torchrun
    (`plan`), this rank's slices of either (parallel.py)."""
    path = Path(model_arg)
    if plan is not None:
        from . import parallel
        model, source = ((parallel.from_pretrained(path, plan, device, dtype), str(path)) if path.is_dir() else
                         (parallel.random_model(Qwen3Config.from_name(model_arg), plan, device, dtype, seed),
                          "random weights"))
        return model, source + f", {plan.world} ranks, experts {plan.experts}"
    if path.is_dir():
        from .checkpoint import from_pretrained
        return from_pretrained(path, device=device, dtype=dtype).requires_grad_(False), str(path)
    return random_model(Qwen3Config.from_name(model_arg), device, dtype, seed), "random weights"


def model_context(model_arg: str) -> tuple[str, int]:
    """(model_arg, its context in tokens): a checkpoint folder's config.json or an official name, checked before
    anything is measured (a typo in the second name once cost the first one's measurements)."""
    path = Path(model_arg)
    if path.is_dir():
        return model_arg, Qwen3Config.from_pretrained(path).context_length
    try:  # an official name, "Qwen/" in front or not
        return model_arg, Qwen3Config.from_name(model_arg).context_length
    except ValueError:
        if os.sep in model_arg.removeprefix("Qwen/") or model_arg.startswith("."):
            raise ValueError(f"--model {model_arg}: no such folder, nor an official model's name") from None
        raise


def bench_model(model_arg: str, device: torch.device, dtype: torch.dtype, prompt_len: int, new: int,
                prefill_len: int, compare: list[str], repeats: int, eager: bool, profile: bool = False,
                seed: int = 0, batch: int = 1, plan=None) -> dict:
    _log(f"{model_arg}, batch {batch}: building")
    model, source = load_model(model_arg, device, dtype, seed, plan)
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=g).to(device)
    # prefill is measured at batch 1 only (a second batch size would compile and capture the decoder again)
    long_prompt = (torch.randint(0, cfg.vocab_size, (1, prefill_len), generator=g).to(device)
                   if prefill_len and batch == 1 else None)
    cuda = device.type == "cuda"
    # On CUDA: the compiled decoder, with the eager loop as the token reference; on CPU nothing is compiled, so the
    # one minqwen3 row is generate() as a user gets it, beside transformers in turns.
    dec = Decoder(model, max_len=max(prompt_len + new, prefill_len if long_prompt is not None else 0))
    impls = [("minqwen3 compiled + CUDA graphs" if cuda else "minqwen3 generate()",
              lambda ids, n: generate(model, ids, n, stop_ids=(), decoder=dec), new, True, True)]
    if eager and cuda:
        impls.append(("minqwen3 eager generate()", lambda ids, n: generate(model, ids, n, stop_ids=(), fast=False),
                      4, False, False))
    if compare and dec._reads_stacks(batch):  # the Decoder would stack at its first call: now, so that the
        stack.stack(model)  # twin shares the stacked weights (it would keep the old ones, a second copy)
    hf = transformers_twin(model) if compare else None
    mask = lambda ids: torch.ones_like(ids)  # noqa: E731
    if "transformers" in compare:
        impls.append(("transformers eager", lambda ids, n: hf.generate(
            ids, attention_mask=mask(ids), max_new_tokens=n, do_sample=False), 4, not cuda, True))
    if "transformers-static" in compare:  # on a GPU, transformers compiles its forward itself with a static cache
        impls.append(("transformers static cache", lambda ids, n: hf.generate(
            ids, attention_mask=mask(ids), max_new_tokens=n, do_sample=False, cache_implementation="static"),
            new, not cuda, False))
    runs = measure(impls, prompt, new, long_prompt, device, repeats)
    if "error" not in runs[0]:
        runs[0]["compile_s"] = dec.setup_s
        if profile and cuda:
            runs[0]["profile"] = kernel_profile(lambda: generate(model, prompt, new, stop_ids=(), decoder=dec),
                                                new - 1)
    reference = next((r["tokens"] for r in reversed(runs) if "tokens" in r and r["impl"].startswith("minqwen3")),
                     None)
    experts = None
    if cfg.num_experts and "tokens" in runs[0]:  # what the batch's routing makes a decode step read
        experts = routed_experts(model, torch.cat([prompt, runs[0]["tokens"].to(device)], 1), prompt_len)
    theirs = next((r["tokens"] for r in runs if r["impl"] == "transformers eager" and "tokens" in r), None)
    for r in runs:
        if "tokens" in r:
            # the reference row itself (the eager loop; without it the compiled row, on CPU the one minqwen3 row)
            # has nothing to agree with: None, printed "-"
            r["agree"] = None if r["tokens"] is reference else _agree(r["tokens"], reference)
            r["agree_hf"] = None if theirs is None or r["tokens"] is theirs else _agree(r["tokens"], theirs)
            del r["tokens"]
    del model, dec, hf, impls
    release()
    return dict(model=model_arg, source=source, config=cfg, runs=runs, batch=batch, experts=experts)


def kernel_profile(fn, steps: int, top: int = 12) -> dict:
    """GPU kernels of fn() (a whole generate(): prefill, then `steps` decode steps), per decode step."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    return dict(kernels_per_step=sum(e.count for e in kernels) / steps,
                busy_ms_per_step=sum(e.self_device_time_total for e in kernels) / steps / 1e3,
                top=[(e.key[:90], e.count / steps, e.self_device_time_total / steps) for e in kernels[:top]])


# ---------------------------------------------------------------- the first call, in a fresh process
FIRST_NEW = 64  # a first call is timed to its 64th new token
# torch.compile's phases worth printing (torch._dynamo.utils.compilation_time_metrics, seconds summed over graphs)
PHASES = {"_compile.compile_inner": "Dynamo, all", "bytecode_tracing": "tracing",
          "OutputGraph.call_user_compiler": "AOTAutograd + Inductor",
          "PyCodeCache.load_by_key_path": "cache loads", "CachingAutotuner.coordinate_descent_tuning": "tuning",
          "async_compile.wait": "kernel compiles"}
# first_calls' processes: (label, options of first_call, extra environment). The first starts cold, in a new home
# directory; the others find what it left there. The bench prints the first three; the rest are variants.
STARTS = [("cold", [], {}), ("warm", [], {}), ("warm, loading first", ["no-overlap"], {})]
VARIANTS = [("warm, with compile workers", [], {"TORCHINDUCTOR_COMPILE_THREADS": "8"}),  # as before run 10
            ("warm, bytecode as Python keeps it", [], {"MINQWEN3_BYTECODE_CACHE": "0"}),  # as before session 9
            ("warm, again", [], {}),
            ("warm, torch's re-tuning, loading first", ["no-overlap", "no-fix"], {}),  # as before run 8
            ("warm, torch's re-tuning", ["no-fix"], {})]


def first_call(model_arg: str, device: torch.device, dtype: torch.dtype, prompt_len: int, new: int = FIRST_NEW,
               seed: int = 0, preimport: bool = False, overlap: bool = True, keep_tuned: bool = True) -> dict:
    """In this process: load the model, then time generate()'s first call as a user makes it (the model's own
    decoder, compiled and captured on a GPU; streaming, as chat does) until its first and its `new`-th token; with
    torch.compile's phases and its cache hits and misses, and where the call's time went: making the Decoder
    (decoder_s: waiting for warmstart's thread included, warm["wait_s"]), its start (start_s: the prefill and first
    token, then compiling and capturing the graphs the call needs, setup_s, which also counts the first compiled
    prefill whole), the steps after (the rest of first_s).
    overlap: start warmstart's background thread as the loading starts, as chat does (otherwise the call does that
    work itself); keep_tuned: warmstart.keep_tuned_configs() (otherwise torch's own handling of tuned kernels);
    preimport: import Dynamo and Inductor before, timed apart."""
    from . import bytecode, warmstart
    warmstart.KEEP_TUNED = keep_tuned
    t = time.perf_counter()
    if preimport:
        import importlib
        for name in ("torch._dynamo", "torch._inductor.compile_fx", "torch._inductor.runtime.triton_heuristics"):
            importlib.import_module(name)
    import_s = time.perf_counter() - t
    t = time.perf_counter()
    if overlap:
        warmstart.start(device, dtype)
    model, _ = load_model(model_arg, device, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=g).to(device)
    _sync(device)
    load_s = time.perf_counter() - t
    seen = []  # when each burst of tokens reached the host
    spans = dict(decoder_s=0.0, start_s=0.0)  # making the model's Decoder; its start (prefill, graphs captured)

    def timed(key, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[key] += time.perf_counter() - t0
        return run

    saved = Decoder.__init__, Decoder.start
    Decoder.__init__, Decoder.start = timed("decoder_s", Decoder.__init__), timed("start_s", Decoder.start)
    try:
        t = time.perf_counter()
        out = generate(model, prompt, new, stop_ids=(), on_token=lambda ids: seen.append(time.perf_counter()))
        _sync(device)
        total = time.perf_counter() - t
    finally:
        Decoder.__init__, Decoder.start = saved
    from torch._dynamo.utils import compilation_time_metrics, counters  # after the call: a user's has not either
    dec = model.__dict__.get("fast_decoder")
    threads = getattr(sys.modules.get("torch._inductor.config"), "compile_threads", None)  # 1: in this process
    return dict(first_s=total, first_token_s=seen[0] - t, setup_s=dec.setup_s if dec is not None else 0.0,
                import_s=import_s, load_s=load_s, compile_threads=threads, **spans,
                warm=dict(warmstart.STATS, bytecode=bytecode.in_use,
                          fixed=device.type == "cuda" and warmstart.keep_tuned_configs()),
                tokens=out[0, prompt_len:].tolist(),
                phases={k: sum(v) for k, v in compilation_time_metrics.items()},
                caches={k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items()
                        if "cache" in k or "coordesc" in k}, cache_dir=os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))


def first_calls(model_arg: str, device: torch.device, dtype: torch.dtype, prompt_len: int,
                new: int = FIRST_NEW, starts: list[tuple] = STARTS, show=None) -> dict:
    """first_call() in fresh processes, one after the other, with a new, empty home directory: the first cold (no
    compile caches: ~/.cache/minqwen3 and Triton's ~/.triton are empty), the others warm (what the first left
    there: a user's second `chat`). starts: (label, first_call options, extra environment) per process.
    {label: dict}, {"error": ...} for a process that failed; show(label, dict, all so far) as each one ends.
    The home directory is a temporary one, or $MINQWEN3_FIRST_CALL_HOME (which must not exist yet; kept after)."""
    root = str(Path(__file__).resolve().parents[1])  # so the children import this same minqwen3
    res = {}
    keep = os.environ.get("MINQWEN3_FIRST_CALL_HOME")
    if keep:
        os.makedirs(keep)  # fails if it exists: a used home would not be a cold start
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="minqwen3-home-")) as home:
        env = {k: v for k, v in os.environ.items()
               if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "XDG_CACHE_HOME")}
        env.update(HOME=home, PYTHONPATH=os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])]))
        for label, options, extra in starts:
            _log(f"{model_arg}: first call, {label}, in a new process")
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "minqwen3.bench", "--first-call", model_arg, str(device),
                                str(dtype).removeprefix("torch."), str(prompt_len), str(new), *options],
                               env={**env, **extra}, capture_output=True, text=True)
            line = next((x for x in p.stdout.splitlines() if x.startswith("FIRST_CALL ")), None)
            res[label] = json.loads(line.removeprefix("FIRST_CALL ")) if line else dict(
                error=f"status {p.returncode}: " + ((p.stderr.strip().splitlines() or ["no output"])[-1])[:200])
            res[label]["process_s"] = time.perf_counter() - t  # python, imports, the model, the call, the exit
            if show is not None:
                show(label, res[label], res)
    return res


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def release() -> None:
    """Free what the last model left: its tensors, compiled code that holds them, the CUDA allocator's cache."""
    gc.collect()
    torch._dynamo.reset()  # compiled code can hold the last model's tensors
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the command
def run(models: list[str], device: str, dtype: str | None, prompt: int, new: int, prefill: int | None,
        compare: list[str], repeats: int = 3, eager: bool = True, out: str | None = None,
        profile: bool = False, batch: list[int] | None = None, first: bool = False, experts: str = "tp") -> int:
    from .cli import parallel_run
    plan = None
    if parallel_run():  # one of several processes (torchrun): tensor parallel
        from . import parallel
        plan, device = parallel.init(device, experts)
        if compare:
            print("under torchrun: measuring minqwen3 alone (transformers would need the whole model per rank)")
            compare = []
        if first:
            print("under torchrun: --first-call is measured in one process only; skipping it")
            first = False
    dev = torch.device(device)
    contexts = [model_context(m) for m in models]  # every --model resolved before any measuring
    if out is not None:
        where = Path(out).resolve().parent
        if not where.is_dir() or not os.access(where, os.W_OK):
            raise ValueError(f"--out {out}: cannot write into {where} (it must be a writable folder)")
        if Path(out).is_dir() or Path(out).exists() and not os.access(out, os.W_OK):
            raise ValueError(f"--out {out}: a folder, or a file that cannot be written")
    batch = batch or [1]
    for b in batch:
        if b < 1:
            raise ValueError(f"--batch {b}: a batch has at least 1 row")
    dt = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if prefill is None:  # the default: up to the shortest context among the models
        prefill = min([4096 if dev.type == "cuda" else 512] + [c - 1 for _, c in contexts])
    if new < 2:
        raise ValueError("--new must be at least 2 (decode time is generate(new) - generate(1))")
    for flag, value, lo in (("--prompt", prompt, 1), ("--prefill", prefill, 0), ("--repeats", repeats, 1)):
        if value < lo:  # before the seconds of measuring the ceilings
            raise ValueError(f"{flag} {value}: must be at least {lo}")
    for m, ctx in contexts:  # generate() would stop at the context's end, and tok/s count tokens never made
        if prompt + new > ctx:
            raise ValueError(f"--prompt {prompt} + --new {new} tokens: {m}'s context is {ctx} tokens")
        if prefill >= ctx:
            raise ValueError(f"--prefill {prefill}: {m}'s context is {ctx} tokens (leave room for the first new one)")
    for c in compare:
        if c not in COMPARE:
            raise ValueError(f"--compare {c!r}: choose from {', '.join(COMPARE)}")
    versions = f"torch {torch.__version__}"
    if compare:
        try:
            import transformers
        except ImportError:
            print("transformers is not installed: measuring minqwen3 alone")
            compare = []
        else:
            versions += f", transformers {transformers.__version__}"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    with torch.no_grad():
        bw, flops = copy_bandwidth(dev), matmul_rate(dev, dt)
    # whether the compiled step's kernels launch early (pdl.py: MINQWEN3_PDL), which moves every decode number
    ours, inductors = pdl.decoder_plan(dev)
    launch = "" if dev.type != "cuda" else (", programmatic dependent launch "
                                            + ("on" if inductors else "ours only" if ours else "off"))
    print(f"# minqwen3 bench, {datetime.date.today()}: {name}, {versions}, {str(dt).removeprefix('torch.')}, "
          f"batch {', '.join(map(str, batch))}{launch}")
    print(f"# measured ceilings: copy {bw / 1e12:.2f} TB/s (read + write), "
          f"{str(dt).removeprefix('torch.')} matmul {flops / 1e12:.3g} TFLOP/s")
    print(f"# tok/s: {new} new tokens after a {prompt}-token prompt, per row, end to end, all rows counted; decode: "
          f"per-step time (generate {new} minus generate 1) / {new - 1}; limit: weight bytes per step / copy "
          f"bandwidth")
    results = []
    for m in models:
        starts = first_calls(m, dev, dt, prompt) if first else None  # before this process holds the model
        for b in batch:
            res = bench_model(m, dev, dt, prompt, new, prefill, compare, repeats, eager, profile, batch=b, plan=plan)
            results.append(res)
            _print(res, bw * (plan.world if plan else 1), flops, dt, prefill, new, dev)
            sys.stdout.flush()
        if starts:
            results[-1]["first_call"] = starts
            _print_first(m, starts, prompt)
    if out and (plan is None or plan.rank == 0):  # the numbers rank 0 printed; every rank writing raced
        Path(out).write_text(json.dumps(dict(date=str(datetime.date.today()), device=name, versions=versions,
                                             dtype=str(dt), copy_Bps=bw, matmul_flops=flops, results=[
                                                 {**r, "config": r["config"].to_dict()} for r in results]),
                                        indent=1, default=str))
    # every row failed (a prompt past a model's context, say): the table says why, the exit status that it did
    return 1 if results and all("error" in r for res in results for r in res["runs"]) else 0


def _print(res: dict, bw: float, flops: float, dtype: torch.dtype, prefill: int, new: int, dev) -> None:
    cfg, B = res["config"], res["batch"]
    nbytes = decode_bytes(cfg, dtype, res["experts"])
    limit_ms = 1e3 * nbytes / bw
    routed = "" if res["experts"] is None else (f"; the rows route to {res['experts']:.1f} distinct experts of "
                                                 f"{cfg.num_experts} per MoE layer and step (measured)")
    print(f"\n## {res['model']} ({res['source']}), batch {B}{routed}: {nbytes / 1e9:.2f} GB of weights per step -> "
          f"limit {limit_ms:.3f} ms/step = {B * 1e3 / limit_ms:,.0f} tok/s")
    pf = prefill_flops(cfg, prefill) if prefill else 0
    label = f"prefill {prefill}" if prefill and B == 1 else "prefill (batch 1 only)"
    print(f"| implementation | tok/s | decode ms/step | of limit | first token ms | {label} tok/s | prefill "
          f"TFLOP/s (of matmul) | warm-up s | peak GiB | same tokens as eager / as transformers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["runs"]:
        if "error" in r:
            print(f"| {r['impl']} | failed: {r['error']} ||||||||")
            continue
        pre = "-", "-"
        if "prefill_s" in r:
            rate = pf / r["prefill_s"]
            pre = f"{prefill / r['prefill_s']:,.0f}", f"{rate / 1e12:.3g} ({rate / flops:.0%})"
        peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
        warm = f"{r['warmup_s']:.1f}" + (f" (compile {r['compile_s']:.1f})" if r.get("compile_s") else "")
        same = ("-" if r["agree"] is None else f"{r['agree']}/{B * new}") + (
            "" if r["agree_hf"] is None else f" / {r['agree_hf']}/{B * new}")
        print(f"| {r['impl']} | {r['tok_s']:,.1f} | {r['decode_ms']:.3f} | {limit_ms / r['decode_ms']:.0%} | "
              f"{r['first_ms']:.1f} | {pre[0]} | {pre[1]} | {warm} | {peak} | {same} |")
    for r in res["runs"]:
        if "profile" in r:
            p = r["profile"]
            print(f"\n{r['impl']}, GPU kernels per decode step: {p['kernels_per_step']:.0f}, busy "
                  f"{p['busy_ms_per_step']:.3f} ms of {r['decode_ms']:.3f} ms (the prefill's spread over the steps)")
            print("| kernel | calls/step | us/step |\n|---|---:|---:|")
            for name, calls, us in p["top"]:
                print(f"| `{name}` | {calls:.1f} | {us:.1f} |")


def _print_first(model_arg: str, starts: dict, prompt: int, new: int = FIRST_NEW) -> None:
    _first_header(model_arg, prompt, new)
    for label, r in starts.items():
        _first_row(label, r, starts)


def _first_header(model_arg: str, prompt: int, new: int = FIRST_NEW) -> None:
    print(f"\n{model_arg}: generate()'s first call in a fresh process, batch 1, a {prompt}-token prompt, until the "
          f"{new}th new token (from the call, after loading; the whole process also starts Python, imports torch "
          f"and loads the model; the call's time, to the last token, is the Decoder's making, the prefill and "
          f"first token, compiling and capturing, and the steps after)")
    print("| start | whole process s | model load s | of it Dynamo's import s | background thread s | "
          "compile workers | bytecode cache | to the first token s | to the last s | making the Decoder s | "
          "of it waiting for the thread s | prefill and first token s | compile and capture s | steps s | "
          + " | ".join(f"{v} s" for v in PHASES.values()) + " | same tokens as cold | compile caches |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(PHASES) + "---:|---|",
          flush=True)


def _first_row(label: str, r: dict, starts: dict) -> None:
    if "error" in r:
        print(f"| {label} | failed: {r['error']} |", flush=True)
        return
    phases = " | ".join(f"{r['phases'].get(k, 0.0):.2f}" for k in PHASES)
    caches = ", ".join(f"{k} {v}" for k, v in sorted(r["caches"].items())) or "-"
    cold = next(iter(starts.values()))
    same = _agree(torch.tensor(r["tokens"]), torch.tensor(cold["tokens"])) if "tokens" in cold else "-"
    warm = r.get("warm", {})
    background = ("failed" if warm.get("warm_error") else "-" if warm.get("warm_s") is None else
                  f"{warm['warm_s']:.1f}")  # the thread's own seconds, beside the loading (and the call, if longer)
    # the Decoder's start = the prefill and first token, then compile + capture (with a compiled prefill's first
    # call); the steps: the rest
    prefill, steps = r["start_s"] - r["setup_s"], r["first_s"] - r["decoder_s"] - r["start_s"]
    dynamo = "-" if warm.get("dynamo_s") is None else f"{warm['dynamo_s']:.2f}"  # start()'s, before the thread
    print(f"| {label} | {r['process_s']:.1f} | {r.get('load_s', 0.0):.1f} | {dynamo} | {background} | "
          f"{r.get('compile_threads') or '-'} | {'minqwen3' if warm.get('bytecode') else '-'} | "
          f"{r['first_token_s']:.1f} | {r['first_s']:.1f} | {r['decoder_s']:.2f} | {warm.get('wait_s', 0.0):.2f} | "
          f"{prefill:.2f} | {r['setup_s']:.1f} | {steps:.2f} | {phases} | {same}/{len(r['tokens'])} | {caches} |",
          flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--first-call"]:  # first_calls() runs this in a fresh process
    _model, _device, _dtype, _prompt, _new, *_opts = sys.argv[2:]
    with torch.no_grad():
        _res = first_call(_model, torch.device(_device), getattr(torch, _dtype), int(_prompt), int(_new),
                          preimport="preimport" in _opts, overlap="no-overlap" not in _opts,
                          keep_tuned="no-fix" not in _opts)
    print("FIRST_CALL " + json.dumps(_res), flush=True)
elif __name__ == "__main__" and sys.argv[1:2] == ["--first-calls"]:  # the starts and the variants, rows as they end
    _model, _device, _dtype, _prompt, *_out = sys.argv[2:]

    def _show(label: str, r: dict, done: dict) -> None:
        _first_row(label, r, done)
        if _out:  # after every process: a run stopped halfway keeps what it measured
            Path(_out[0]).write_text(json.dumps(done, indent=1))

    _first_header(_model, int(_prompt))
    first_calls(_model, torch.device(_device), getattr(torch, _dtype), int(_prompt), starts=STARTS + VARIANTS,
                show=_show)
