"""Sparse mixture of experts: a softmax router picks top-k of E SwiGLU experts per token; no shared expert."""
import torch
import torch.nn.functional as F
from torch import nn

from . import moe_decode, router_decode


def _grouped_mm_ok(x: torch.Tensor) -> bool:
    # one kernel for all experts: Hopper (sm90+) bf16 only. get_device_properties, unlike
    # get_device_capability, is folded to a constant by torch.compile.
    return (x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_properties(x.device).major >= 9)


class Experts(nn.Module):
    """E SwiGLU experts stored stacked, (E, out, in), so a token's experts can be gathered by index.

    The checkpoint stores one tensor per expert (experts.{j}.gate_proj.weight); the loader maps row j.
    Decoding a few tokens with more than gather_max pairs on a GPU goes through moe_decode.py's kernels (each
    chosen expert read once); one token's down projections through its kernel 2.
    On Hopper nothing here waits on the GPU: no .item(), .tolist() or bincount (which reads its max back);
    elsewhere the prefill path reads each layer's block boundaries back once, to loop over experts.
    """
    gather_max = 16  # up to this many (token, expert) pairs, gather the chosen weights (decode)
    every_expert_max = 16  # training on a GPU with up to this many experts runs them all (see _every_expert)

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        E, H, I = num_experts, hidden_size, intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(E, I, H))
        self.up_proj = nn.Parameter(torch.empty(E, I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (N, H) tokens, idx (N, k) chosen experts, w (N, k) their weights -> (N, H)."""
        N, k = idx.shape
        if N * k > self.gather_max and moe_decode.available(x, idx, self.gate_proj):
            # a few tokens, no gradient: two kernels of our own, each chosen expert read once (up to gather_max
            # pairs, at batch 1, the gathered products below, fused by Inductor, measured faster: benchmarks run 7)
            return moe_decode.experts_decode(x, idx, w, self.gate_proj, self.up_proj, self.down_proj)
        if (x.is_cuda and torch.is_grad_enabled() and self.gate_proj.shape[0] <= self.every_expert_max
                and not torch.compiler.is_compiling()):
            return self._every_expert(x, idx, w)
        flat = idx.reshape(-1)  # (N*k,)
        # compiled code cannot loop over a host list of counts, so without grouped_mm it always gathers
        if N * k <= self.gather_max or (torch.compiler.is_compiling() and not _grouped_mm_ok(x)):
            # Under torch.compile with coordinate-descent tuning, Inductor turns these batched
            # matrix-vector products into reductions that load the chosen rows in place: only the
            # selected experts' weights are read, never copied out first.
            xr = x.repeat_interleave(k, dim=0)[:, :, None]  # (N*k, H, 1)
            h = F.silu(torch.bmm(self.gate_proj[flat], xr)) * torch.bmm(self.up_proj[flat], xr)  # (N*k, I, 1)
            if N == 1 and moe_decode.down_at_batch_1 and moe_decode.available(x, idx, self.down_proj):
                # one token: the k down projections and their weighted sum in moe_decode's kernel 2, on the h
                # realised here (Inductor's gathered down product inlines silu(gate) * up into its reduction):
                # 30B-A3B's step 3.40 against 3.63 ms (docs/benchmarks.md, session 7)
                return moe_decode.down_sum((h[..., 0] * w.view(k, 1)).view(k, 1, -1), flat, self.down_proj)
            y = torch.bmm(self.down_proj[flat], h)[..., 0]  # (N*k, H)
        else:
            y = self._sorted(x, flat, k)
        return (y.view(N, k, -1) * w[..., None]).sum(1)

    def _every_expert(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Training on a GPU: every expert on every token, weighted by the router (0 where not chosen) -> (N, H).

        E/k times the expert FLOPs of the sparse paths, but three batched matmuls, no sort and nothing the host
        waits for; for a few small experts (the demo model) that is much faster. Outputs and gradients are the
        sparse paths': an expert a token did not choose gets weight 0, so it adds nothing and learns nothing.
        """
        E = self.gate_proj.shape[0]
        gates = torch.zeros(x.shape[0], E, device=x.device, dtype=w.dtype).scatter_add(1, idx, w)  # (N, E)
        h = F.silu(torch.matmul(x, self.gate_proj.transpose(1, 2))) * torch.matmul(x, self.up_proj.transpose(1, 2))
        y = torch.matmul(h, self.down_proj.transpose(1, 2))  # (E, N, H)
        return torch.einsum("enh,ne->nh", y, gates.to(y.dtype))

    def _sorted(self, x: torch.Tensor, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Sort the (token, expert) pairs by expert so each expert multiplies one contiguous block -> (N*k, H)."""
        E = self.gate_proj.shape[0]
        order = flat.argsort(stable=True)
        xs = x[order // k]  # (N*k, H): row i is the token of the i-th pair in expert order
        ends = torch.searchsorted(flat[order], torch.arange(E, device=x.device), right=True)  # (E,) block ends
        if _grouped_mm_ok(x):
            # grouped GEMM: group e is rows [ends[e-1], ends[e]) of A times B[e]; B is (E, in, out)
            offs = ends.to(torch.int32)  # stays on the GPU
            mm = lambda a, wt: torch._grouped_mm(a, wt.transpose(1, 2), offs=offs)
            ys = mm(F.silu(mm(xs, self.gate_proj)) * mm(xs, self.up_proj), self.down_proj)
        else:  # one matmul per expert that received tokens; idle experts cost nothing
            ys = torch.empty_like(xs)
            start = 0
            for e, end in enumerate(ends.tolist()):
                if end > start:
                    xe = xs[start:end]
                    ys[start:end] = (F.silu(xe @ self.gate_proj[e].T) * (xe @ self.up_proj[e].T)) @ self.down_proj[e].T
                    start = end
        # back to (token, slot) order; unlike index_add_ (atomics on CUDA) the sum over slots is deterministic
        return torch.empty_like(ys).index_copy_(0, order, ys)


class SparseMoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.top_k, self.norm_topk_prob = c.num_experts_per_tok, c.norm_topk_prob
        self.gate = nn.Linear(c.hidden_size, c.num_experts, bias=False)  # the router
        self.experts = Experts(c.num_experts, c.hidden_size, c.moe_intermediate_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) -> output (B, T, H) and router logits (B*T, E) for the load-balancing loss."""
        B, T, H = x.shape
        x = x.reshape(B * T, H)
        logits = self.gate(x)  # (N, E)
        # unsorted: the k slots are summed, so their order is irrelevant, and sorting them costs a kernel
        if self.norm_topk_prob and router_decode.available(logits, self.top_k):
            w, idx = router_decode.route_decode(logits, self.top_k)  # decode on a GPU: top-k and softmax, one kernel
        elif self.norm_topk_prob:  # softmax, top-k, renormalise = top-k of the logits, then softmax over those k
            top, idx = logits.topk(self.top_k, dim=-1, sorted=False)  # (N, k)
            w = top.float().softmax(-1)
        else:
            w, idx = logits.softmax(-1, dtype=torch.float).topk(self.top_k, dim=-1, sorted=False)  # (N, k)
        return self.experts(x, idx, w.to(x.dtype)).view(B, T, H), logits


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int, mask: torch.Tensor | None = None,
                        counts: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-style auxiliary loss E * sum_e f_e * P_e, averaged over MoE layers: 1.0 when perfectly balanced.

    f_e: fraction of routed (token, slot) pairs sent to expert e; P_e: mean router probability of e.
    router_logits: per MoE layer, (N, E); mask (N,) marks real tokens.
    counts: (L, E) expert counts to use for f instead of this micro-batch's own: pass the counts
    accumulated over every micro-batch of a step (and all-reduced across ranks) for the global-batch
    balance Qwen3 trains with (Qiu et al. 2025): experts may then specialise within a micro-batch.
    """
    total = 0.0
    for layer, logits in enumerate(router_logits):
        E = logits.shape[-1]
        probs = logits.float().softmax(-1)  # (N, E)
        m = torch.ones(probs.shape[0], device=probs.device) if mask is None else mask.reshape(-1).float()
        P = (probs * m[:, None]).sum(0) / m.sum().clamp(min=1)  # (E,)
        c = expert_counts(logits, top_k, m) if counts is None else counts[layer].float()
        f = c / c.sum().clamp(min=1)
        total = total + E * (f * P).sum()
    return total / max(len(router_logits), 1)


@torch.no_grad()
def expert_counts(logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """How many of the (masked) tokens chose each expert among their top-k: (E,)."""
    idx = logits.topk(top_k, dim=-1).indices  # (N, k); softmax keeps the order, so logits suffice
    weight = torch.ones(idx.numel(), device=logits.device) if mask is None else \
        mask.reshape(-1, 1).float().expand_as(idx).reshape(-1)
    # index_add_ rather than bincount, which reads its max back to the host (a sync per layer on a GPU);
    # the counts are whole numbers, exact in float32 in any order of summation
    return torch.zeros(logits.shape[-1], device=logits.device).index_add_(0, idx.reshape(-1), weight)
