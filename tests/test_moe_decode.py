"""The decode experts' kernels (minqwen3/moe_decode.py) against the experts written out pair by pair, in float64."""
import pytest
import torch
import torch.nn.functional as F

from minqwen3.moe import Experts
from minqwen3 import moe_decode, pdl
from minqwen3.moe_decode import available, down_sum, experts_decode, reference


def pairs_oracle(x, idx, w, gate, up, down):
    """sum over token n's slots s of w[n, s] * expert idx[n, s] applied to x[n], one pair at a time, float64."""
    f = [t.double() for t in (x, w, gate, up, down)]
    x, w, gate, up, down = f
    y = torch.zeros(x.shape[0], gate.shape[2], dtype=torch.float64, device=x.device)
    for s in range(idx.shape[1]):
        e = idx[:, s]
        h = F.silu(torch.einsum("nih,nh->ni", gate[e], x)) * torch.einsum("nih,nh->ni", up[e], x)
        y += w[:, s, None] * torch.einsum("nhi,ni->nh", down[e], h)
    return y


def routing(kind, N, k, E, g):
    """(N, k) expert choices: random (distinct per token), every slot of every token on one expert (a token
    choosing it k times), all N*k pairs on distinct experts, or one busy expert beside random ones."""
    if kind == "one":
        return torch.full((N, k), 3)
    if kind == "distinct":
        return torch.randperm(E, generator=g)[:N * k].view(N, k)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(N)])
    if kind == "busy":
        idx[:, 0] = torch.where((idx[:, 1:] == 3).any(1), idx[:, 0], 3)
    return idx


def case(N, k, E, H, I, dtype, kind, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    gate, up = (0.1 * torch.randn(E, I, H, generator=g) for _ in "gu")
    down = 0.1 * torch.randn(E, H, I, generator=g)
    x, w = torch.randn(N, H, generator=g), torch.rand(N, k, generator=g)
    idx = routing(kind, N, k, E, g)
    return [t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in (x, idx, w, gate, up, down)]


def rel_err(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def test_experts_take_the_kernels_above_gather_max_pairs_without_grad(monkeypatch):
    """moe.Experts' dispatch, on a CPU with the kernels' availability faked: more than gather_max pairs and no
    gradient -> the kernels; one token (8 pairs) -> the gathered gate|up and kernel 2 (down_sum) for the rest,
    given that product with the routing weights folded in; 2 tokens (16 pairs) -> the gathered products; with
    grad -> torch."""
    import minqwen3.moe_decode as md
    calls, down = [], []
    monkeypatch.setattr(md, "available", lambda x, idx, weight: not torch.is_grad_enabled())
    monkeypatch.setattr(md, "experts_decode", lambda x, *a: calls.append(x.shape[0]) or torch.zeros_like(x))
    monkeypatch.setattr(md, "down_sum", lambda h, e, d: down.append((h, e)) or md.reference_down(h, e, d))
    ex = Experts(24, 32, 16)
    for p in ex.parameters():
        torch.nn.init.normal_(p, std=0.3)
    for N in (1, 2, 3, 8):
        x, idx, w, *_ = case(N, 8, 24, 32, 16, torch.float32, "random", device="cpu")
        with torch.no_grad():
            got = ex(x, idx, w)
            want = pairs_oracle(x, idx, w, ex.gate_proj, ex.up_proj, ex.down_proj)
        if N <= 2:  # the torch arithmetic around the kernels (for one token, the weights folded into h)
            assert rel_err(got, want) < 1e-5
        if N == 1:
            one = idx
        ex(x, idx, w)
    assert calls == [3, 8]  # 24 and 64 pairs; 8 and 16 are not more than gather_max
    assert len(down) == 1 and down[0][0].shape == (8, 1, 16) and torch.equal(down[0][1], one.view(-1))


@pytest.mark.parametrize("kind", ["random", "one", "distinct", "busy"])
def test_reference_matches_the_pairs_oracle(kind):
    """The plain-torch spelling of the kernels' arithmetic (each distinct expert once, weights folded in)."""
    args = case(5, 4, 24, 32, 16, torch.float32, kind, device="cpu")
    assert rel_err(reference(*args), pairs_oracle(*args)) < 1e-6


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["random", "one", "distinct", "busy"])
@pytest.mark.parametrize("N, k, E, H, I", [(1, 8, 128, 256, 96), (8, 8, 128, 256, 96), (16, 8, 128, 256, 96),
                                           (5, 4, 40, 200, 72)])
def test_gpu_moe_decode_matches_the_pairs_oracle(dtype, tol, kind, N, k, E, H, I):
    args = case(N, k, E, H, I, dtype, kind)
    assert available(args[0], args[1], args[3])
    want = pairs_oracle(*args)
    experts_decode(*args)  # the first call of a shape tunes the kernels (timing them waits for the GPU)
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host wait raises
    try:
        got = experts_decode(*args)
        again = experts_decode(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert got.shape == (N, H) and got.dtype == dtype
    assert rel_err(got, want) < tol
    assert torch.equal(got, again)  # deterministic: no atomics
    assert rel_err(reference(*args), want) < tol  # and the plain-torch spelling on the same inputs


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_experts_decode_with_kernels_without_grad_only():
    """moe.Experts takes the kernels for a few tokens without gradients: compiled (fullgraph) and inside a CUDA
    graph; with gradients it keeps its differentiable paths."""
    x, idx, w, gate, up, down = case(8, 8, 128, 256, 96, torch.bfloat16, "random")
    ex = Experts(128, 256, 96).cuda().bfloat16()
    with torch.no_grad():
        for p, t in zip(ex.parameters(), (gate, up, down)):
            p.copy_(t)
        got = ex(x, idx, w)
        assert torch.equal(got, experts_decode(x, idx, w, gate, up, down))  # it was the kernels' path
        compiled = torch.compile(ex, fullgraph=True)
        assert rel_err(compiled(x, idx, w), pairs_oracle(x, idx, w, gate, up, down)) < 1e-2
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # the kernels are tuned already (the calls above)
            out = ex(x, idx, w)
        for seed in (1, 2):  # new tokens and routing in place, then replay
            for t, new in zip((x, idx, w), case(8, 8, 128, 256, 96, torch.bfloat16, "random", seed)):
                t.copy_(new)
            graph.replay()
            assert torch.equal(out, ex(x, idx, w))
    xg = x[:2].clone().requires_grad_()  # 16 pairs: the gathered path, differentiable
    assert not available(xg, idx[:2], ex.gate_proj)
    ex(xg, idx[:2], w[:2]).float().square().sum().backward()
    assert xg.grad is not None and ex.gate_proj.grad is not None


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("dtype, tol, N, k, E, H, I", [(torch.bfloat16, 1e-2, 8, 8, 128, 256, 96),
                                                      (torch.float32, 1e-5, 5, 4, 40, 200, 72)], ids=["bf16", "fp32"])
def test_gpu_every_tiling_matches_the_pairs_oracle(dtype, tol, N, k, E, H, I):
    """Every configuration the autotuners may pick (they time only those that keep the SMs busy, so small shapes
    reach only the smallest row blocks), run directly: rows and columns no tile divides, masked."""
    import triton
    x, idx, w, gate, up, down = args = case(N, k, E, H, I, dtype, "busy")
    want = pairs_oracle(*args)
    NK, NP = N * k, 16
    S = moe_decode._splits(x.device, NK, H)
    from triton.runtime.errors import OutOfResources
    ran = 0
    for c in moe_decode._configs():
        meta = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, IEEE=dtype == torch.float32,
                    **pdl.launch(x.device))
        hid = torch.empty(NK, N, I, device="cuda", dtype=dtype)
        experts = torch.empty(NK, device="cuda", dtype=idx.dtype)
        count = torch.empty(1, device="cuda", dtype=torch.int32)
        part = torch.empty(S, N, H, device="cuda")
        try:
            moe_decode._gate_up_kernel[(triton.cdiv(I, c.kwargs["BLOCK_I"]), NK)](
                x, idx, w, gate, up, hid, experts, count, N, NK, x.stride(0), K=k, H=H, I=I, NP=NP, JP=64, **meta)
            moe_decode._down_kernel[(triton.cdiv(H, c.kwargs["BLOCK_I"]), S)](
                hid, experts, count, down, part, N, S, H=H, I=I, NP=NP, COUNT=0, **meta)
        except OutOfResources:  # float32 tiles of many stages may not fit in shared memory: the autotuners skip them
            assert dtype == torch.float32, c
            continue
        ran += 1
        assert rel_err(part.sum(0), want) < tol, c
    assert ran >= len(moe_decode._configs()) // 2


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["random", "one"])
def test_gpu_one_token_gathers_gate_up_and_runs_kernel_2(dtype, tol, kind):
    """Batch 1 in moe.Experts: the gathered gate|up products, then down_sum (kernel 2 with the count known), eager
    and compiled; one token choosing one expert in all k slots reads it k times and still sums right."""
    x, idx, w, gate, up, down = args = case(1, 8, 128, 256, 96, dtype, kind)
    ex = Experts(128, 256, 96).cuda().to(dtype)
    with torch.no_grad():
        for p, t in zip(ex.parameters(), (gate, up, down)):
            p.copy_(t)
        want = pairs_oracle(*args)
        assert rel_err(ex(x, idx, w), want) < tol
        assert rel_err(torch.compile(ex, fullgraph=True)(x, idx, w), want) < tol
        h = torch.randn(8, 3, 96, device="cuda", dtype=dtype)  # moe_down on its own: 3 tokens, repeats
        e = torch.tensor([5, 9, 5, 0, 127, 9, 9, 3], device="cuda")
        want_down = torch.einsum("thi,tni->nh", down[e].double(), h.double())
        assert rel_err(down_sum(h, e, down), want_down) < tol
