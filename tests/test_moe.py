"""The mixture-of-experts layer: expert dispatch paths and routing against loops written out by hand."""
import torch
import torch.nn.functional as F

from minqwen3 import Qwen3Config
from minqwen3.moe import Experts, SparseMoE


def test_moe_sorted_path_matches_oracle_without_bincount(monkeypatch):
    monkeypatch.setattr(torch, "bincount", None)  # on CUDA it reads its maximum back to the host
    torch.manual_seed(0)
    ex = Experts(6, 16, 24)
    for p in ex.parameters():
        torch.nn.init.normal_(p)
    x, idx, w = torch.randn(9, 16), torch.stack([torch.randperm(6)[:2] for _ in range(9)]), torch.rand(9, 2)
    idx[:, 0] = 3  # expert 3 busy, some experts idle
    ref = torch.stack([sum(w[n, s] * (F.silu(ex.gate_proj[e] @ x[n]) * (ex.up_proj[e] @ x[n])) @ ex.down_proj[e].T
                           for s, e in enumerate(idx[n].tolist())) for n in range(9)])
    torch.testing.assert_close(ex(x, idx, w), ref, rtol=1e-5, atol=1e-5)  # 18 pairs > gather_max: sorted path


def test_router_picks_top_k_by_probability_and_renormalises():
    """softmax -> top-k -> renormalise (Qwen3, norm_topk_prob) and plain top-k probabilities, slot order aside."""
    torch.manual_seed(0)
    for norm in (True, False):
        moe = SparseMoE(Qwen3Config(hidden_size=16, num_experts=10, num_experts_per_tok=3, moe_intermediate_size=8,
                                    norm_topk_prob=norm))
        x = torch.randn(2, 5, 16)
        seen = {}
        moe.experts.forward = lambda x, idx, w: seen.update(idx=idx, w=w) or x  # record the routing only
        _, logits = moe(x)
        probs = logits.softmax(-1)
        want_w, want_idx = probs.topk(3, dim=-1)
        if norm:
            want_w = want_w / want_w.sum(-1, keepdim=True)
        order = seen["idx"].argsort(-1)  # (N, k): any slot order is fine, so compare sorted by expert id
        got_idx, got_w = seen["idx"].gather(-1, order), seen["w"].gather(-1, order)
        o = want_idx.argsort(-1)
        assert torch.equal(got_idx, want_idx.gather(-1, o))
        torch.testing.assert_close(got_w, want_w.gather(-1, o), rtol=1e-6, atol=1e-6)


def test_training_path_of_every_expert_equals_the_sparse_path():
    """Experts._every_expert (GPU training: every expert on every token, weight 0 where not chosen) gives the sparse
    path's outputs and the same gradients for the tokens, the router weights and every expert's matrices."""
    from minqwen3.moe import expert_counts
    torch.manual_seed(0)
    ex = Experts(8, 16, 24)
    for p in ex.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    ex = ex.double()
    logits = torch.randn(50, 8, dtype=torch.float64)
    top, idx = logits.topk(2, dim=-1)
    w = top.softmax(-1).requires_grad_(True)
    sparse = (ex._sorted(x, idx.reshape(-1), 2).view(50, 2, -1) * w[..., None]).sum(1)
    every = ex._every_expert(x, idx, w)
    torch.testing.assert_close(every, sparse)
    wrt = [x, w, ex.gate_proj, ex.up_proj, ex.down_proj]
    for a, b in zip(torch.autograd.grad(every.square().sum(), wrt), torch.autograd.grad(sparse.square().sum(), wrt)):
        torch.testing.assert_close(a, b)
    mask = torch.rand(50) > 0.3  # the counts without bincount: those of the masked tokens' choices
    assert torch.equal(expert_counts(logits, 2, mask), torch.bincount(idx[mask].reshape(-1), minlength=8).float())
