"""Exercise 4 · Sparse mixture of experts.  Read notebooks/04_moe.ipynb, then fill in the TODOs.

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
        """TODO: three nn.Parameter(torch.empty(...)) named gate_proj, up_proj, down_proj, shapes as above.
        (The test fills them in; the model's own init draws them from a normal distribution.)"""
        super().__init__()
        raise NotImplementedError("exercise 4: Experts.__init__")

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (N, H) tokens, idx (N, k) each token's chosen experts, w (N, k) their weights -> (N, H):
        out[n] = sum over j of w[n, j] * expert_{idx[n, j]}(x[n]).

        TODO, two ways to the same result:
        - few pairs (N * k <= self.gather_max, i.e. decoding one token): gather. flat = idx.reshape(-1);
          self.gate_proj[flat] is (N*k, I, H): the chosen experts' matrices, one per (token, slot) pair; repeat
          each token k times (repeat_interleave) and use torch.bmm for the three products.
        - many pairs (prefill): y = self._sorted(x, flat, k).
        Either way y is (N*k, H), one row per (token, slot): weight the rows by w and sum over the k slots.
        """
        raise NotImplementedError("exercise 4: Experts.forward")

    def _sorted(self, x: torch.Tensor, flat: torch.Tensor, k: int) -> torch.Tensor:
        """Sort-by-expert dispatch. flat (N*k,) = idx.reshape(-1). Returns (N*k, H) in (token, slot) order.

        TODO:
        1. order = flat.argsort(stable=True): the pairs grouped by expert. Pair p belongs to token p // k, so
           xs = x[order // k] lists the tokens expert by expert.
        2. ends = torch.searchsorted(flat[order], torch.arange(E), right=True): expert e's rows are
           xs[ends[e-1]:ends[e]] (from 0 for e = 0).
        3. for each expert with at least one row: one SwiGLU over its whole block (idle experts cost nothing).
        4. undo the sort: out[order] = ys   (e.g. torch.empty_like(ys).index_copy_(0, order, ys)).
        """
        raise NotImplementedError("exercise 4: Experts._sorted")


class SparseMoE(nn.Module):
    """Qwen3's MoE block: softmax router over E experts, top-k, (optionally) renormalised weights, no shared expert.

    config: num_experts (128 in Qwen3), num_experts_per_tok (8), hidden_size, moe_intermediate_size,
    norm_topk_prob (True in Qwen3).
    """

    def __init__(self, config):
        """TODO: keep top_k and norm_topk_prob; create
        - gate: nn.Linear(hidden_size -> num_experts, bias=False)   (the router; the checkpoint calls it `gate`)
        - experts: Experts(num_experts, hidden_size, moe_intermediate_size)
        """
        super().__init__()
        raise NotImplementedError("exercise 4: SparseMoE.__init__")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) -> (output (B, T, H), router logits (B*T, E)).

        TODO:
        1. flatten to (N, H) tokens; logits = self.gate(x)
        2. probabilities: softmax over experts IN FLOAT32 (logits.softmax(-1, dtype=torch.float));
           w, idx = their top-k
        3. if norm_topk_prob: divide w by its sum over the k slots (the k weights then sum to 1)
        4. out = self.experts(x, idx, w cast to x.dtype), back to (B, T, H); return it with the logits
        """
        raise NotImplementedError("exercise 4: SparseMoE.forward")


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int, mask: torch.Tensor | None = None,
                        counts: torch.Tensor | None = None) -> torch.Tensor:
    """The auxiliary loss E * sum_e f_e * P_e, averaged over the MoE layers. 1.0 when perfectly balanced.

    router_logits: one (N, E) tensor per MoE layer. mask (N,): 1 for real tokens, 0 for padding.
    counts (L, E), optional: expert counts to take f from instead of this micro-batch's own (global-batch
    balancing: the counts summed over every micro-batch of the step).

    TODO, per layer:
        probs = softmax(logits) in float32                                            (N, E)
        P_e   = mean of probs over the (real) tokens                                  (E,)
        c     = expert_counts(logits, top_k, mask)   or counts[layer]                  (E,)
        f_e   = c / c.sum()       (a fraction of the N*k routed pairs: sum_e f_e = 1)
        loss  = E * (f * P).sum()
    then the mean over layers. Only P carries a gradient: f counts discrete choices.
    """
    raise NotImplementedError("exercise 4: load_balancing_loss")


@torch.no_grad()
def expert_counts(logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """logits (N, E) -> (E,) float: how many of the (masked-in) tokens have each expert among their top-k.

    TODO: idx = logits.topk(top_k).indices (softmax keeps the order, so logits suffice); count each expert,
    giving each token the weight mask[n] if there is a mask (torch.bincount with weights=, minlength=E).
    """
    raise NotImplementedError("exercise 4: expert_counts")
