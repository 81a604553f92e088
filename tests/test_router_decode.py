"""The router's top-k and softmax kernel (minqwen3/router_decode.py) against torch.topk and softmax, ties included."""
import pytest
import torch

from minqwen3 import Qwen3Config, router_decode
from minqwen3.moe import SparseMoE
from minqwen3.router_decode import reference


def by_sorting(logits, k):
    """The k chosen ids per row by Python's sort on (-logit, id): the largest first, ties to the lower id."""
    return torch.tensor([sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in logits.float().tolist()])


def torch_router(logits, k):
    """moe.SparseMoE's torch routing (norm_topk_prob): weights (N, k) float32 and ids (N, k), topk's slot order."""
    top, idx = logits.topk(k, dim=-1, sorted=False)
    return top.float().softmax(-1), idx


def by_id(w, idx):
    """Weights and ids with each row's slots sorted by expert id (the slots' order is free: they are summed)."""
    order = idx.argsort(-1)
    return w.gather(-1, order), idx.gather(-1, order)


def tied_logits(N, E, g, kind):
    """Router logits: 'coarse' takes 8 values only (a row has ~E/8 copies of each, so the k-th is tied),
    'normal' is Gaussian (bf16 rounding ties some), 'equal' is one value everywhere (all E tied)."""
    if kind == "coarse":
        return torch.randint(-4, 4, (N, E), generator=g).float() / 2
    if kind == "equal":
        return torch.full((N, E), 0.25)
    return torch.randn(N, E, generator=g)


@pytest.mark.parametrize("kind", ["coarse", "normal", "equal"])
def test_reference_takes_the_largest_and_the_lower_id_on_ties(kind):
    g = torch.Generator().manual_seed(0)
    logits = tied_logits(6, 40, g, kind).bfloat16()
    for k in (1, 5, 8):
        w, idx = reference(logits, k)
        assert torch.equal(idx, by_sorting(logits, k))  # slot r holds the r-th largest
        torch.testing.assert_close(w, logits.float().gather(-1, idx).softmax(-1), rtol=0, atol=0)


def test_reference_matches_the_torch_router_without_ties():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 24, generator=g)  # float32 Gaussian: no two equal
    got, want = by_id(*reference(logits, 3)), by_id(*torch_router(logits, 3))
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)


def test_sparse_moe_takes_the_kernel_only_where_available(monkeypatch):
    """SparseMoE routes with route_decode where available() says so (faked on a CPU, with the reference in the
    kernel's place) and norm_topk_prob is set, with torch's topk elsewhere; the same choice and weights."""
    calls = []
    monkeypatch.setattr(router_decode, "available", lambda logits, k: not torch.is_grad_enabled())
    monkeypatch.setattr(router_decode, "route_decode", lambda l, k: calls.append(l.shape) or reference(l, k))
    torch.manual_seed(0)
    moe = SparseMoE(Qwen3Config(hidden_size=16, num_experts=10, num_experts_per_tok=3, moe_intermediate_size=8))
    seen = []
    moe.experts.forward = lambda x, idx, w: seen.append((w, idx)) or x  # record the routing only
    x = torch.randn(2, 1, 16)
    with torch.no_grad():
        moe(x)
    moe(x)
    assert calls == [(2, 10)]
    (w_kernel, i_kernel), (w_torch, i_torch) = by_id(*seen[0]), by_id(*seen[1])
    assert torch.equal(i_kernel, i_torch)
    torch.testing.assert_close(w_kernel, w_torch.detach())
    moe.norm_topk_prob = False  # top-k of the probabilities: torch's path, whatever available() says
    with torch.no_grad():
        moe(x)
    assert len(calls) == 1


def test_available_refuses_cpu_gradients_and_long_rows():
    logits = torch.randn(2, 128)
    assert not router_decode.available(logits, 8)  # a CPU tensor
    if torch.cuda.is_available() and router_decode.triton is not None:
        c = logits.cuda()
        assert router_decode.available(c, 8)
        assert not router_decode.available(c.requires_grad_(), 8)
        assert not router_decode.available(torch.randn(router_decode.MAX_ROWS + 1, 128, device="cuda"), 8)
        assert not router_decode.available(torch.randn(2, router_decode.MAX_EXPERTS * 2, device="cuda"), 8)
        assert not router_decode.available(torch.randn(2, 4, device="cuda"), 8)  # k > E


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("kind", ["coarse", "normal", "equal"])
@pytest.mark.parametrize("N, E, k", [(1, 128, 8), (8, 128, 8), (16, 128, 8), (5, 40, 4), (3, 256, 8), (2, 64, 1)])
def test_gpu_route_decode_chooses_as_torch_topk(dtype, kind, N, E, k):
    """The same experts as torch.topk on the GPU (ties: the lower id, as topk takes them), the slots sorted
    largest first, and the weights of torch's softmax over the k (norm_topk_prob)."""
    g = torch.Generator().manual_seed(N * E + k)
    logits = tied_logits(N, E, g, kind).to("cuda", dtype)
    w, idx = router_decode.route_decode(logits, k)
    assert w.shape == idx.shape == (N, k) and w.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.equal(idx.cpu(), by_sorting(logits.cpu(), k))
    got, want = by_id(w, idx), by_id(*torch_router(logits, k))
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_sparse_moe_routes_with_the_kernel_compiled_and_in_a_graph():
    """SparseMoE without gradients on the GPU: the kernel's route gives the torch router's output, eager, compiled
    (fullgraph) and replayed in a CUDA graph; with gradients the torch router, differentiable."""
    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=256, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=96)
    moe = SparseMoE(cfg).cuda().bfloat16()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 8, 256, device="cuda", dtype=torch.bfloat16)  # 8 tokens: moe_decode's kernels
    with torch.no_grad():
        got, logits = moe(x)
        router_decode.enabled = False
        try:
            want, _ = moe(x)
        finally:
            router_decode.enabled = True
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)  # slot order differs: sums in other orders
        compiled = torch.compile(moe, fullgraph=True)
        torch.testing.assert_close(compiled(x)[0], got, rtol=2e-2, atol=2e-3)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, _ = moe(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        assert torch.equal(out, moe(x)[0])
    xg = x.clone().requires_grad_()
    y, logits = moe(xg)
    assert logits.requires_grad and not router_decode.available(logits, 8)
    y.float().square().sum().backward()
    assert xg.grad is not None and moe.gate.weight.grad is not None
