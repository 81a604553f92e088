"""Exercise 4 · Sparse mixture of experts.  Read notebooks/04_moe.ipynb first.

Check your work:  pytest exercises/test_moe.py --impl student
"""
import torch
import torch.nn.functional as F
from torch import nn


class Experts(nn.Module):
    """E SwiGLU experts, stored stacked so a token's experts can be picked by index:
    gate_proj, up_proj (E, I, H) and down_proj (E, H, I); expert e computes
        down_proj[e] @ (silu(gate_proj[e] @ x) * (up_proj[e] @ x)).
    """
    gather_max = 16  # up to this many (token, expert) pairs: gather the chosen weights (decode); above: sort

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        """Three nn.Parameters named gate_proj, up_proj, down_proj, shapes as above (torch.empty is enough:
        the tests fill them in; the model's own init draws them from a normal distribution)."""
        super().__init__()
        raise NotImplementedError("exercise 4: Experts.__init__")

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (N, H) tokens, idx (N, k) each token's chosen experts, w (N, k) their weights -> (N, H):
        out[n] = sum over j of w[n, j] * expert_{idx[n, j]}(x[n]).

        Two ways to the same result, both required:
        - at most self.gather_max (token, expert) pairs (N * k; decoding one token): gather each pair's expert
          matrices by index and run the pairs as one batched product;
        - more pairs (a prefill): self._sorted(x, idx.reshape(-1), k), which runs each expert once over all of
          its tokens (gathering would copy k weight matrices per token: gigabytes for a long prompt).
        """
        raise NotImplementedError("exercise 4: Experts.forward")

    def _sorted(self, x: torch.Tensor, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Sort-by-expert dispatch. flat (N*k,) = idx.reshape(-1): pair p is token p // k and expert flat[p].
        Returns (N*k, H): row p = expert flat[p] applied to token p // k (unweighted), in pair order.
        Group the pairs by expert, run one SwiGLU per expert over its block of tokens (idle experts cost nothing),
        then put the rows back in pair order."""
        raise NotImplementedError("exercise 4: Experts._sorted")


class SparseMoE(nn.Module):
    """Qwen3's MoE block: softmax router over E experts, top-k, (optionally) renormalised weights, no shared expert.

    config: num_experts (128 in Qwen3), num_experts_per_tok (8), hidden_size, moe_intermediate_size,
    norm_topk_prob (True in Qwen3). Submodules: gate, the router, nn.Linear(hidden_size -> num_experts, no
    bias) (the checkpoint calls it `gate`), and experts, an Experts(num_experts, hidden_size,
    moe_intermediate_size). Keep top_k and norm_topk_prob as attributes.
    """

    def __init__(self, config):
        super().__init__()
        raise NotImplementedError("exercise 4: SparseMoE.__init__")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) -> (output (B, T, H), router logits (B*T, E)).

        Per token: router probabilities = softmax of the router logits, in float32; the top_k experts and their
        probabilities; if norm_topk_prob, those k weights divided by their sum; output = the weighted sum of the
        chosen experts' outputs (weights cast back to x's dtype).
        """
        raise NotImplementedError("exercise 4: SparseMoE.forward")


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int, mask: torch.Tensor | None = None,
                        counts: torch.Tensor | None = None) -> torch.Tensor:
    """The auxiliary loss E * sum_e f_e * P_e, averaged over the MoE layers. 1.0 when perfectly balanced.

    router_logits: one (N, E) tensor per MoE layer. mask (N,): 1 for real tokens, 0 for padding.
    counts (L, E), optional: expert counts to take f from instead of this micro-batch's own (global-batch
    balancing: the counts summed over every micro-batch of the step).

    Per layer: P_e = the mean over real tokens of the router probability of e (softmax in float32);
    f_e = the fraction of the routed (token, slot) pairs that went to e (from expert_counts, or counts[layer]),
    so that sum_e f_e = 1. Only P carries a gradient: f counts discrete choices.
    """
    raise NotImplementedError("exercise 4: load_balancing_loss")


@torch.no_grad()
def expert_counts(logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """logits (N, E) -> (E,) float: how many of the tokens have each expert among their top-k, a token counting
    mask[n] (1 real, 0 padding) when a mask is given."""
    raise NotImplementedError("exercise 4: expert_counts")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# - Gather: flat = idx.reshape(-1); self.gate_proj[flat] is (N*k, I, H); xr = x.repeat_interleave(k, 0)[:, :, None]
#   (N*k, H, 1); torch.bmm for the three products; y (N*k, H); (y.view(N, k, H) * w[..., None]).sum(1).
# - _sorted: order = flat.argsort(stable=True); xs = x[order // k]; ends = torch.searchsorted(flat[order],
#   torch.arange(E), right=True) gives each expert's block end (expert e: rows ends[e-1]:ends[e], from 0 for e = 0);
#   undo with torch.empty_like(ys).index_copy_(0, order, ys).
# - Router: w, idx = logits.softmax(-1, dtype=torch.float).topk(k); w = w / w.sum(-1, keepdim=True).
# - Loss: c = expert_counts(...); f = c / c.sum(); E * (f * P).sum(); then the mean over layers.
# - Counts: torch.bincount(idx.reshape(-1), weights=mask repeated k times (or None), minlength=E).float().
