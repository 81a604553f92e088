"""Time variants of the compiled decode step side by side, in one process (an experiment log, not a test).

    PYTHONPATH=. python scripts/decode_variants.py --model Qwen3-0.6B Qwen3-8B Qwen3-30B-A3B

Each variant patches one thing, builds a fresh Decoder (so it compiles again), and reports the decode time
per token, its fraction of the weight-bandwidth limit, and the GPU kernels per step. "after" is the package as
it is; "before" routes as before docs/benchmarks.md's run 3 (softmax over all experts, sorted top-k); "+combo"
and "+nocombo" force Inductor's combo kernels (independent kernels of one graph launched as one) on or off;
"+mmattn" decodes attention as three library calls (attention.decode_attention) instead of flash_decode.py's
one kernel, "+flex" with FlexAttention; "+gathered" decodes the experts with moe.Experts' torch paths (gathered
matrix-vector products, or the grouped GEMM) instead of moe_decode.py's kernels, "+gathermax:N" sets
moe.Experts.gather_max (0: the kernels at batch 1 too); "+nodown1" keeps the gathered down products at batch 1
(moe_decode.down_at_batch_1 off: as before session 7), "+oldtiles" gives moe_decode's kernels run 7's two tilings
(16 rows a program) to time from, "+tiles6" adds 128 columns in 6 stages to their tilings (and 64 rows to kernel
2's; the package's own tilings since session 8), "+s7tiles" gives them session 7's tilings (no 6 stages, kernel 2
16 or 32 rows), "+splits:N" sets moe_decode.SPLIT_PROGRAMS (kernel 2's splits of the experts; 4 before session 8),
"+b:N" runs a variant at batch N only (of several --batch); "+maxk" routes with k rounds of max instead of topk;
"+topk" routes with torch's topk and softmax instead of router_decode.py's kernel (as before session 8); "+nomatvec"
leaves o_proj and down_proj to torch's products (which Inductor compiles into reductions, cuBLAS at batch > 1)
instead of matvec.py's split-K kernel, which the package takes for 2 to 8 rows, "+matvec1" for one row too
(MINQWEN3_MATVEC=all); "+nonormed" applies the RMSNorms before q|k|v and gate|up as a step of their own (torch's,
which Inductor compiles into a statistics kernel and the products' reductions), as before session 9, instead of
matvec.py's kernel with the norm on the way into the stacked product (MINQWEN3_NORMED=0), "+normedall" takes that
kernel at one row on every model (MINQWEN3_NORMED=all; by default small and split dense models only); "+inline"
spells the dense MLP's silu(gate) * up in torch, as before session 7, which Inductor inlines into the down
projection (the package computes it in a kernel of its own, swiglu.py); "+fdfile:PATH" decodes attention with the
flash_decode.py at PATH (an earlier version of the kernel: git show REV:minqwen3/flash_decode.py > PATH);
"+fd:NAME=VALUE" sets one of flash_decode.py's launch settings (MIN_SPLIT, BLOCK, NUM_WARPS, NUM_STAGES); "+blaslt"
asks torch for cuBLASLt instead of cuBLAS for the library GEMMs (batch > 1); "+mmrows:N" lets Inductor write a
matrix product of up to N rows as a broadcast-multiply and sum (a reduction it fuses with what is around it), as
it does by itself only for one row (torch/_inductor/decomposition.py's mm, with coordinate-descent tuning): at
batch > 1 each projection is otherwise a library GEMM of its own; "+nostack" decodes with one projection per
weight (Decoder(stacked=False), as before session 8; run 9's "+fuse", stacked copies, and session 8's "+fdnorm",
QK-Norm and RoPE inside flash_decode, both measured, went in session 9); "+slots:N" gives the cache N slots;
"+nopdl" launches no kernel with programmatic dependent launch (pdl.py: MINQWEN3_PDL=0);
"+pdlours" only matvec.py's, flash_decode.py's and the other kernels of ours, not Inductor's (MINQWEN3_PDL=ours);
"+cdthr:X" makes Inductor's coordinate-descent tuning move to a neighbouring launch setting only where it timed
more than X faster (a fraction; Inductor's own threshold is 0.001, below the noise of timing a few-µs kernel, so
two compiles of one graph tune apart: session 11) and compiles without the caches, which hold the other rule's
choices (session 14: 0.03 slower than torch's threshold on Qwen3-8B and Qwen3-30B-A3B, docs/benchmarks.md); "+cfg:KEY=VALUE" sets any Inductor option. Random weights in the official shapes, bf16, batch 1 (--batch N
[M ...]: N rows, then M; "of limit" then counts each row's top-k experts only, where `bench` counts their union),
as `python -m minqwen3 bench`.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

from minqwen3 import Qwen3Config, attention, flash_decode, matvec, moe, moe_decode, pdl, router_decode, swiglu
from minqwen3.bench import copy_bandwidth, decode_bytes, kernel_profile, measure, one_line, release
from minqwen3.generation import Decoder, generate
from minqwen3.model import random_model


def old_moe_forward(self, x):
    B, T, H = x.shape
    x = x.reshape(B * T, H)
    logits = self.gate(x)
    w, idx = logits.softmax(-1, dtype=torch.float).topk(self.top_k, dim=-1)
    if self.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    return self.experts(x, idx, w.to(x.dtype)).view(B, T, H), logits


def maxk_moe_forward(self, x):
    """The router's top-k as k rounds of (max, hide it): reductions Inductor can fuse, where topk is a library
    kernel of its own."""
    B, T, H = x.shape
    x = x.reshape(B * T, H)
    logits = self.gate(x)
    rest, cols = logits.float(), torch.arange(logits.shape[-1], device=x.device)
    tops, idxs = [], []
    for _ in range(self.top_k):
        top, i = rest.max(-1, keepdim=True)
        tops.append(top)
        idxs.append(i)
        rest = torch.where(cols == i, float("-inf"), rest)
    w = torch.cat(tops, -1).softmax(-1)  # norm_topk_prob, as Qwen3-MoE
    return self.experts(x, torch.cat(idxs, -1), w.to(x.dtype)).view(B, T, H), logits


def flex_decode(q, k, v, mask):
    from torch.nn.attention.flex_attention import flex_attention
    live = mask.reshape(mask.shape[0], -1)  # (B|1, S)
    one = live.shape[0] == 1

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(live[0 if one else b, kv_idx], score, float("-inf"))
    return flex_attention(q, k, v, score_mod=score_mod, enable_gqa=True)


_fd_files: dict[str, object] = {}


def flash_decode_file(path: str):
    """The flash_decode module in the file at path (another version of the kernel), its custom op renamed so that
    it can live beside the package's."""
    if path not in _fd_files:
        src = Path(path).read_text().replace('"minqwen3::flash_decode"', '"minqwen3_variant%d::flash_decode"'
                                             % len(_fd_files))
        f = Path(tempfile.mkdtemp()) / "flash_decode_variant.py"  # Triton reads the kernel's source from its file
        f.write_text(src)
        spec = importlib.util.spec_from_file_location(f"flash_decode_variant{len(_fd_files)}", f)
        mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # Dynamo imports it by its name
        spec.loader.exec_module(mod)
        _fd_files[path] = mod
    return _fd_files[path]


@contextlib.contextmanager
def mm_as_reduction(rows: int):
    """Inductor decomposes aten.mm into multiply + sum (a reduction it can fuse and tune) for up to `rows` rows,
    not only for one."""
    from torch._inductor import decomposition
    op = torch.ops.aten.mm.default
    tables = [decomposition.decompositions, decomposition.fast_random_decomps()]  # the second is a cached merge
    saved = tables[0][op]

    def mm(a, b, out_dtype=None):
        if a.device.type == "cuda" and out_dtype is None and isinstance(a.shape[0], int) and a.shape[0] <= rows:
            return (a.unsqueeze(2).float() * b.unsqueeze(0).float()).sum(dim=1).to(a.dtype)
        return saved(a, b, out_dtype) if out_dtype is not None else saved(a, b)
    for t in tables:
        t[op] = mm
    try:  # the compile caches' keys do not see a changed decomposition: no caches for this variant
        with torch._inductor.config.patch(force_disable_caches=True):
            yield
    finally:
        for t in tables:
            t[op] = saved


@contextlib.contextmanager
def patched(name: str):
    """Apply a variant named by parts joined with "+": "before" (the old router), "combo" / "nocombo" (Inductor's
    combo kernels forced on / off), "cfg:KEY=VALUE" (any torch._inductor.config setting, VALUE a Python literal).
    Yields Decoder's combo_kernels argument."""
    parts = name.split("+")
    config = {k: ast.literal_eval(v) for k, v in (p[4:].split("=", 1) for p in parts if p.startswith("cfg:"))}
    saved = moe.SparseMoE.forward, attention.decode_attention, flash_decode.available
    saved_experts = (moe_decode.enabled, moe.Experts.gather_max, moe_decode.down_at_batch_1, moe_decode._gate_up,
                     moe_decode._down, moe_decode.SPLIT_PROGRAMS, router_decode.enabled)
    saved_fd = attention.flash_decode, swiglu.available, torch.backends.cuda.preferred_blas_library()
    saved_matvec = matvec.enabled, matvec.min_rows, matvec.normed, matvec.normed_one_row_always
    saved_pdl = pdl.enabled, pdl.inductor
    settings = {n: getattr(flash_decode, n) for n in ("MIN_SPLIT", "BLOCK", "NUM_WARPS", "NUM_STAGES")}
    from torch._inductor.runtime.coordinate_descent_tuner import CoordescTuner
    saved_improvement = CoordescTuner.__dict__["has_improvement"]
    try:
        for p in parts:
            if p.startswith("cdthr:"):  # tuning moves only for a gain above the threshold
                threshold = float(p[6:])
                CoordescTuner.has_improvement = staticmethod(
                    lambda baseline, test: test is not None and test < baseline * (1 - threshold))
                config["force_disable_caches"] = True
        for p in parts:
            if p.startswith("fdfile:"):
                attention.flash_decode = flash_decode_file(p[7:])
            if p.startswith("fd:"):
                k, v = p[3:].split("=")
                if k not in settings:
                    raise ValueError(f"{p}: flash_decode has no launch setting {k} (one of {sorted(settings)})")
                setattr(flash_decode, k, int(v))
        if "inline" in parts:
            swiglu.available = lambda g: False
        if "nomatvec" in parts:
            matvec.enabled = False
        if "matvec1" in parts:
            matvec.min_rows = 1
        if "nonormed" in parts:
            matvec.normed = False
        if "normedall" in parts:
            matvec.normed_one_row_always = True
        if "nopdl" in parts:
            pdl.enabled = False
        if "pdlours" in parts:
            pdl.inductor = False
        if "blaslt" in parts:
            torch.backends.cuda.preferred_blas_library("cublaslt")
        if "gathered" in parts:
            moe_decode.enabled = False
        if "nodown1" in parts:
            moe_decode.down_at_batch_1 = False
        if "oldtiles" in parts:  # run 7's tilings, fresh autotuners (each times its shapes again)
            moe_decode._gate_up, moe_decode._down = tuners(moe_decode._configs(rows=(16,)))
        if "s7tiles" in parts:  # session 7's tilings (kernel 2: 16 or 32 rows)
            s7 = ((128, 4), (256, 3))
            moe_decode._gate_up, moe_decode._down = tuners(moe_decode._configs(tiles=s7),
                                                           moe_decode._configs(rows=(16, 32), tiles=s7))
        if "topk" in parts:
            router_decode.enabled = False
        if "tiles6" in parts:  # what scripts/moe_tilings.py found faster at batch 8 (session 7)
            moe_decode._gate_up, moe_decode._down = tuners(moe_decode._configs(tiles=((128, 4), (256, 3), (128, 6))))
        for p in parts:
            if p.startswith("splits:"):  # the partial sums' shape changes, which the compile caches' keys miss
                moe_decode.SPLIT_PROGRAMS = int(p[7:])
                config["force_disable_caches"] = True
        for p in parts:
            if p.startswith("gathermax:"):
                moe.Experts.gather_max = int(p[10:])
        if "before" in parts:
            moe.SparseMoE.forward = old_moe_forward
        if "maxk" in parts:
            moe.SparseMoE.forward = maxk_moe_forward
        if "mmattn" in parts or "flex" in parts:
            flash_decode.available = lambda q, mask: False
        if "flex" in parts:
            attention.decode_attention = flex_decode
        rows = [int(p[7:]) for p in parts if p.startswith("mmrows:")]
        with torch._inductor.config.patch(config), (mm_as_reduction(rows[0]) if rows else contextlib.nullcontext()):
            yield True if "combo" in parts else False if "nocombo" in parts else None
    finally:
        CoordescTuner.has_improvement = saved_improvement
        moe.SparseMoE.forward, attention.decode_attention, flash_decode.available = saved
        attention.flash_decode, swiglu.available, blas = saved_fd
        matvec.enabled, matvec.min_rows, matvec.normed, matvec.normed_one_row_always = saved_matvec
        pdl.enabled, pdl.inductor = saved_pdl
        torch.backends.cuda.preferred_blas_library(blas)
        for k, v in settings.items():
            setattr(flash_decode, k, v)
        (moe_decode.enabled, moe.Experts.gather_max, moe_decode.down_at_batch_1, moe_decode._gate_up,
         moe_decode._down, moe_decode.SPLIT_PROGRAMS, router_decode.enabled) = saved_experts


def tuners(configs: list, down_configs: list | None = None) -> tuple:
    """Autotuners of moe_decode's two kernels over `configs` (kernel 2: `down_configs` if given), pruned as the
    package's are."""
    import triton
    return (triton.autotune(configs, key=["N", "K", "H", "I"],
                            prune_configs_by={"early_config_prune": moe_decode._prune_gate_up})(
                                moe_decode._gate_up_kernel),
            triton.autotune(down_configs or configs, key=["N", "S", "H", "I", "COUNT"],
                            prune_configs_by={"early_config_prune": moe_decode._prune_down})(moe_decode._down_kernel))


def tilings() -> str:
    """What moe_decode's autotuners timed in this process (the last shape each) and chose, for the log."""
    out = []
    for name in ("_gate_up", "_down"):
        tuner = getattr(moe_decode, name, None)
        for key, best in getattr(tuner, "cache", {}).items():
            key = key[:len(getattr(tuner, "keys", key))]  # the key's arguments, not the dtypes after them
            out.append(f"  {name} {key}: chose {best.kwargs} w{best.num_warps} s{best.num_stages}")
        for c, t in getattr(tuner, "configs_timings", {}).items():
            ms = t[0] if isinstance(t, (list, tuple)) else t
            out.append(f"    {name} {c.kwargs} w{c.num_warps} s{c.num_stages}: {1e3 * ms:.1f} us")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["Qwen3-0.6B", "Qwen3-8B", "Qwen3-30B-A3B"])
    p.add_argument("--variants", nargs="+", default=["after", "after+combo", "after+nocombo"],
                   help="e.g. after+cfg:triton.persistent_reductions=False (see patched())")
    p.add_argument("--moe-variants", nargs="*", default=["before"], help="extra variants for MoE models")
    p.add_argument("--batched-variants", nargs="*", default=[], help="extra variants for batches of 2 or more rows")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[1],
                   help="rows, each its own random prompt; several sizes are measured one after the other")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--top", type=int, default=10, help="kernels to list per variant")
    p.add_argument("--show", nargs="*", default=["_flash_decode", "swiglu"],
                   help="also list the kernels whose names hold one of these, wherever they rank")
    p.add_argument("--max-len", type=int, help="cache slots (default: prompt + new; the bench uses 4096)")
    args = p.parse_args()
    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name(dev)}, copy {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    for name in args.model:
        cfg = Qwen3Config.from_name(name)
        limit_ms = 1e3 * decode_bytes(cfg, torch.bfloat16) / bw
        model = random_model(cfg, dev, torch.bfloat16)
        for batch in args.batch:
            prompt = torch.randint(0, cfg.vocab_size, (batch, args.prompt), generator=torch.Generator().manual_seed(0))
            prompt = prompt.to(dev)
            reference = None
            variants = (args.variants + (args.moe_variants if cfg.num_experts else [])
                        + (args.batched_variants if batch > 1 else []))
            for v in variants:
                if any(p.startswith("b:") for p in v.split("+")) and f"b:{batch}" not in v.split("+"):
                    continue  # "+b:N": this variant at batch N only
                with patched(v) as combo, torch.no_grad():
                    slots = [int(p[6:]) for p in v.split("+") if p.startswith("slots:")]
                    try:
                        fast = Decoder(model, max_len=(slots or [args.max_len or args.prompt + args.new])[0],
                                       combo_kernels=combo, stacked=False if "nostack" in v.split("+") else None)
                        gen = lambda ids, n: generate(model, ids, n, stop_ids=(), decoder=fast)  # noqa: E731
                        r = measure([(v, gen, args.new, True, False)], prompt, args.new, None, dev, 3)[0]
                        if "error" in r:
                            raise RuntimeError(r["error"])
                        prof = kernel_profile(lambda: gen(prompt, args.new), args.new - 1, 10**4)
                    except Exception as e:  # one variant failing must not lose the others
                        print(f"{name} b{batch} {v}: failed: {one_line(e, 300)}",
                              flush=True)
                        continue
                    tokens = r["tokens"]
                    reference = tokens if reference is None else reference
                    same = int((tokens == reference).cumprod(-1).sum())
                    rows.append((name, batch, v, r["decode_ms"], limit_ms / r["decode_ms"], prof["kernels_per_step"],
                                 prof["busy_ms_per_step"], fast.setup_s, same))
                    print(f"\n### {name} batch {batch} {v}: decode {r['decode_ms']:.3f} ms "
                          f"({100 * limit_ms / r['decode_ms']:.0f}% of limit), {prof['kernels_per_step']:.0f} kernels, "
                          f"busy {prof['busy_ms_per_step']:.3f} ms, compile {fast.setup_s:.1f} s, same tokens as the "
                          f"first variant {same}/{tokens.numel()}")
                    for i, (key, calls, us) in enumerate(prof["top"]):
                        if i < args.top or any(k in key for k in args.show):
                            print(f"  {us:8.1f} us  {calls:5.1f}x  {key}{'' if i < args.top else f'  (#{i + 1})'}")
                    if cfg.num_experts:
                        print(tilings())
                    sys.stdout.flush()
                    del fast
                    release()
        del model
        release()
    print("\n| model | batch | variant | decode ms/step | of limit | kernels/step | GPU busy ms | compile s "
          "| same tokens |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, batch, v, ms, frac, k, busy, comp, same in rows:
        print(f"| {n} | {batch} | {v} | {ms:.3f} | {100 * frac:.0f}% | {k:.0f} | {busy:.3f} | {comp:.1f} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
