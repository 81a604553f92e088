"""Exercise 4 · Sparse MoE, against transformers' Qwen3MoeSparseMoeBlock and load_balancing_loss_func."""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # a standalone block warns that no experts backend was chosen
from transformers.models.qwen3_moe.modeling_qwen3_moe import (  # noqa: E402
    Qwen3MoeSparseMoeBlock, load_balancing_loss_func)

H, E, K, I = 32, 8, 2, 24  # hidden, experts, top-k, expert width


def setup(impl, norm_topk_prob=True, top_k=K, seed=0):
    """The oracle block with random weights, and yours holding the same weights. Returns (yours, theirs)."""
    cfg = transformers.Qwen3MoeConfig(hidden_size=H, num_experts=E, num_experts_per_tok=top_k,
                                      moe_intermediate_size=I, norm_topk_prob=norm_topk_prob)
    torch.manual_seed(seed)
    theirs = Qwen3MoeSparseMoeBlock(cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.2)
    ours = impl.SparseMoE(cfg)  # the same field names as minqwen3.Qwen3Config
    with torch.no_grad():
        # transformers stacks gate and up as one (E, 2I, H) tensor: gate rows first, then up
        ours.gate.weight.copy_(theirs.gate.weight)
        ours.experts.gate_proj.copy_(theirs.experts.gate_up_proj[:, :I])
        ours.experts.up_proj.copy_(theirs.experts.gate_up_proj[:, I:])
        ours.experts.down_proj.copy_(theirs.experts.down_proj)
    return ours, theirs


@pytest.mark.parametrize("tokens", [1, 8, 40], ids=["decode-gather", "gather-limit", "prefill-sorted"])
@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_block_matches_transformers(impl, tokens, norm_topk_prob):
    ours, theirs = setup(impl, norm_topk_prob)
    x = torch.randn(1, tokens, H)
    with torch.no_grad():
        out, logits = ours(x)
        torch.testing.assert_close(out, theirs(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits, theirs.gate(x.view(-1, H))[0])  # the router logits, (N, E)


def test_both_dispatch_paths_agree(impl):
    """Gathering the chosen experts' weights and sorting tokens by expert are two ways to the same sum."""
    ours, _ = setup(impl, top_k=3)
    x = torch.randn(20, H)
    w, idx = torch.randn(20, E).softmax(-1).topk(3)
    with torch.no_grad():
        ours.experts.gather_max = 10 ** 9  # force the gather path
        gathered = ours.experts(x, idx, w)
        ours.experts.gather_max = 0  # force the sorted path
        sorted_ = ours.experts(x, idx, w)
    naive = torch.zeros(20, H)
    ex = ours.experts
    for n in range(20):
        for j in range(3):
            e = idx[n, j]
            naive[n] += w[n, j] * (ex.down_proj[e] @ (F.silu(ex.gate_proj[e] @ x[n]) * (ex.up_proj[e] @ x[n])))
    torch.testing.assert_close(gathered, naive.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sorted_, naive.detach(), rtol=1e-5, atol=1e-6)


def test_expert_counts(impl):
    torch.manual_seed(0)
    logits = torch.randn(50, E)
    mask = (torch.rand(50) < 0.7).float()
    top = logits.softmax(-1).topk(K).indices  # (N, K)
    want = F.one_hot(top, E).sum(1).float()  # (N, E): 1 where the token chose the expert
    torch.testing.assert_close(impl.expert_counts(logits, K), want.sum(0))
    torch.testing.assert_close(impl.expert_counts(logits, K, mask), (want * mask[:, None]).sum(0))


def test_loss_matches_transformers(impl):
    """transformers counts f over tokens (summing to top_k) and pools layers; ours is a fraction of the routed
    pairs (summing to 1), per layer, then averaged: per layer, ours = theirs / top_k."""
    torch.manual_seed(0)
    layers = [torch.randn(2 * 6, E) * 2 for _ in range(3)]
    mask = torch.ones(2, 6)
    mask[0, :2] = 0  # left padding in row 0
    want = sum(load_balancing_loss_func((lg,), E, K) for lg in layers) / (3 * K)
    torch.testing.assert_close(impl.load_balancing_loss(layers, K), want)
    want_masked = sum(load_balancing_loss_func((lg,), E, K, mask) for lg in layers) / (3 * K)
    torch.testing.assert_close(impl.load_balancing_loss(layers, K, mask.reshape(-1)), want_masked)


def test_loss_is_one_when_balanced_and_has_gradient(impl):
    logits = torch.zeros(E * 4, E)
    logits[torch.arange(E * 4), torch.arange(E * 4) % E] = 5.0  # every expert chosen equally often
    logits.requires_grad_(True)
    loss = impl.load_balancing_loss([logits], 1)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    assert logits.grad is not None


def test_global_batch_counts(impl):
    """With counts summed over micro-batches, f is the global batch's: E * sum f_global * P_micro."""
    torch.manual_seed(0)
    micro = [torch.randn(10, E) + 3 * F.one_hot(torch.full((10,), m), E) for m in range(4)]  # each favours one
    counts = torch.stack([sum(F.one_hot(lg.topk(K).indices, E).sum((0, 1)) for lg in micro).float()])  # (1, E)
    f = counts[0] / counts[0].sum()
    for lg in micro:
        want = E * (f * lg.softmax(-1).mean(0)).sum()
        torch.testing.assert_close(impl.load_balancing_loss([lg], K, counts=counts), want)


def _per_pair(experts, x, idx):
    """(N*k, H): expert idx[n, j] applied to token n, row n*k + j, one small loop (the oracle for _sorted)."""
    ex = experts
    rows = []
    for n in range(idx.shape[0]):
        for e in idx[n].tolist():
            rows.append(ex.down_proj[e] @ (F.silu(ex.gate_proj[e] @ x[n]) * (ex.up_proj[e] @ x[n])))
    return torch.stack(rows).detach()


def test_sorted_dispatch_itself(impl):
    """_sorted, called directly: per (token, slot) pair, in (token, slot) order (the sort undone), idle experts
    skipped. Some experts get no token here, one gets many."""
    ours, _ = setup(impl, top_k=3)
    torch.manual_seed(1)
    x = torch.randn(12, H)
    idx = torch.stack([torch.randperm(E)[:3] for _ in range(12)])
    idx[:, 0] = 5  # every token picks expert 5 first
    idx[idx == 2] = 6  # and nobody picks expert 2
    with torch.no_grad():
        got = ours.experts._sorted(x, idx.reshape(-1), 3)
    assert got.shape == (12 * 3, H)
    torch.testing.assert_close(got, _per_pair(ours.experts, x, idx), rtol=1e-5, atol=1e-6)


def test_prefill_goes_through_sorted_dispatch(impl):
    """More than gather_max (token, expert) pairs must take the sorted path (gathering copies k weight matrices per
    token: 1.4 GB for a 64-token prefill of Qwen3-30B-A3B); a single decoded token must not."""
    ours, _ = setup(impl)
    calls = []
    real = ours.experts._sorted
    ours.experts._sorted = lambda *a: calls.append(1) or real(*a)  # an instance attribute shadows the method
    with torch.no_grad():
        ours(torch.randn(1, 40, H))
        assert calls, "40 tokens x top-2 = 80 pairs > gather_max = 16: forward must call self._sorted"
        calls.clear()
        ours(torch.randn(1, 1, H))
        assert not calls, "one token (2 pairs) should gather its experts, not sort"


def test_global_counts_per_layer(impl):
    """Two layers with their own global-batch counts: each layer's f comes from its own row of counts, and the
    layers' losses are averaged (the formula written out)."""
    torch.manual_seed(0)
    layers = [torch.randn(10, E) + 3 * F.one_hot(torch.full((10,), l), E) for l in range(2)]
    counts = torch.stack([torch.arange(1., E + 1), torch.arange(E, 0., -1)])  # (L, E), different per layer
    want = sum(E * (c / c.sum() * lg.softmax(-1).mean(0)).sum() for c, lg in zip(counts, layers)) / 2
    torch.testing.assert_close(impl.load_balancing_loss(layers, K, counts=counts), want)
