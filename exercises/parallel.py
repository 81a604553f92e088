"""Exercise 11 · Tensor and expert parallelism: the sharding plan.  Read notebooks/10_parallelism.ipynb first.

Check your work:  pytest exercises/test_parallel.py --impl student

N ranks (one process per GPU) each hold a slice of the weights. You write the plan: for a parameter's name (the
checkpoint key) and its full shape, which part rank r of N holds. `minqwen3.parallel.shard` applies such a plan to
the unchanged model and adds one all-reduce (sum) after each attention block and each MLP; the tests need no
processes: they simulate the N ranks one after the other, each computing its partial output from its slices, and
the sum of the partials must be the unsplit block's output.

Plan is given (it is minqwen3's): Plan(rank, world, experts="tp"), rank in 0..world-1; experts "tp" (every expert
cut like an MLP) or "ep" (whole experts divided among the ranks).
"""
from minqwen3.config import Qwen3Config
from minqwen3.parallel import Plan  # noqa: F401  (given: the tests build plans with it)


def heads(config: Qwen3Config, plan: "Plan") -> tuple[int, int, int, int]:
    """(first query head, query heads, first key/value head, key/value heads) of rank plan.rank of plan.world.

    H = num_attention_heads query heads split evenly: rank r holds heads r*H/N .. (r+1)*H/N - 1.
    K = num_key_value_heads split evenly too when N divides K. When the ranks are more than K (and a multiple of
    it), a KV head cannot be split (its attention needs all of its head_dim values): the N/K ranks that hold the
    query heads of one GQA group each hold a whole copy of that group's KV head, so rank r uses KV head
    r // (N / K), and holds 1 KV head.
    Raise ValueError naming num_attention_heads if N does not divide H, and naming num_key_value_heads if neither
    of K and N divides the other.
    """
    raise NotImplementedError("exercise 11: heads")


def slices(name: str, shape: tuple[int, ...], config: Qwen3Config, plan: "Plan") -> tuple[slice, ...]:
    """This rank's part of parameter `name` whose full shape is `shape`: one slice per dimension (the rank holds
    weight[slices(...)]).

    With one rank (world 1) every parameter is whole. Otherwise, by name (D = head_dim, N = world):
    - self_attn.q_proj.weight (H*D, C): by output (rows), this rank's query heads, whole heads: rows q0*D ..
      (q0 + hq)*D - 1 with (q0, hq) from heads();
    - self_attn.k_proj.weight, v_proj.weight (K*D, C): rows of this rank's key/value heads (maybe a copy);
    - self_attn.o_proj.weight (C, H*D): by input (columns): the same query heads' columns;
    - mlp.gate_proj.weight, mlp.up_proj.weight (I, C) of a dense MLP: rows, I = intermediate_size split evenly;
      mlp.down_proj.weight (C, I): the same range of columns;
    - MoE experts, stacked: mlp.experts.gate_proj and up_proj (E, I_moe, C), mlp.experts.down_proj (E, C, I_moe)
      (no ".weight" suffix). plan.experts == "tp": each expert cut like a dense MLP (I_moe =
      moe_intermediate_size evenly: gate/up on dimension 1, down on dimension 2). "ep": whole experts, rank r
      holds experts r*E/N .. (r+1)*E/N - 1 (E = num_experts), dimension 0 of all three;
    - lm_head.weight (V, C): by vocabulary rows when N divides vocab_size, else whole;
    - everything else is whole on every rank: the RMSNorms (QK-Norm included: one weight shared by all heads),
      the router mlp.gate.weight (every rank must route every token the same way), the embedding.
    A size that does not divide evenly among the ranks is refused: raise ValueError naming the config field
    (intermediate_size, moe_intermediate_size, num_experts, or via heads()), never drop the remainder.
    """
    raise NotImplementedError("exercise 11: slices")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# heads:
# 1. hq = H // N; the first query head is rank * hq.
# 2. if K % N == 0: hk = K // N and the first KV head is rank * hk. Else (N a multiple of K) hk = 1 and the first is
#    rank // (N // K). Both are the KV head of the rank's first query head: (rank * hq) // (H // K), one formula.
# slices:
# 1. full = tuple(slice(None) for _ in shape); return it when plan.world == 1.
# 2. a helper even(n, field) -> slice(rank * n // N, (rank + 1) * n // N) that raises ValueError(f"{field} = {n} ...")
#    when n % N, for the inner sizes and the experts.
# 3. q = slice(q0 * D, (q0 + hq) * D), kv = slice(k0 * D, (k0 + hk) * D).
# 4. a list of (regular expression, dimension, slice) tried in order with re.fullmatch; the answer is
#    full[:dim] + (the slice,) + full[dim + 1:]. Match whole key names: r".*self_attn\.q_proj\.weight". Careful:
#    r".*mlp\.gate.*" would also match the router mlp.gate.weight, which must stay whole.
