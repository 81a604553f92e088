"""Tests of the tests: plausible wrong plans for the parallel exercise must each fail a named test of
test_parallel.py, and a correct plan written differently from minqwen3's must pass them all. (This file tests the
tests, not your code.)"""
from types import SimpleNamespace


from exercises import test_parallel as T
from exercises.mutants import mutation_tests, reference_only  # noqa: F401 (an autouse fixture)


def solution(wrong: str | None = None):
    """A student's plan, written plainly with endswith; `wrong` slips in one mistake."""

    def even(n, field, plan):
        if n % plan.world and wrong != "uneven split drops the remainder":
            raise ValueError(f"{field} = {n} is not a multiple of {plan.world}")
        k = n // plan.world
        return slice(plan.rank * k, plan.rank * k + k)

    def heads(config, plan):
        H, K, N, r = config.num_attention_heads, config.num_key_value_heads, plan.world, plan.rank
        mine = even(H, "num_attention_heads", plan)
        hq = mine.stop - mine.start
        if wrong != "uneven split drops the remainder" and K % N and N % K:
            raise ValueError(f"num_key_value_heads = {K} and {N} ranks")
        if K >= N or wrong == "KV heads split when the ranks outnumber them":
            return r * hq, hq, r * (K // N), K // N
        return r * hq, hq, (r % K if wrong == "KV head r % K" else r // (N // K)), 1

    def slices(name, shape, config, plan):
        full = [slice(None)] * len(shape)
        if plan.world == 1:
            return tuple(full)
        D, N, r = config.head_dim, plan.world, plan.rank
        q0, hq, k0, hk = heads(config, plan)
        if wrong == "KV heads split when the ranks outnumber them":  # half a head each
            k0, hk = r * config.num_key_value_heads / N, config.num_key_value_heads / N
        q = slice(r, None, N) if wrong == "q rows interleaved" else slice(q0 * D, (q0 + hq) * D)
        kv = slice(int(k0 * D), int((k0 + hk) * D))
        cut = None  # (dimension, slice)
        if name.endswith("self_attn.q_proj.weight"):
            cut = 0, q
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
            cut = 0, kv
        elif name.endswith("self_attn.o_proj.weight"):
            cut = (0 if wrong == "o_proj split by output" else 1), q
        elif name.endswith(("q_norm.weight", "k_norm.weight")) and wrong == "QK-Norm split":
            cut = 0, even(shape[0], "head_dim", plan)
        elif name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
            cut = 0, even(config.intermediate_size, "intermediate_size", plan)
        elif name.endswith("mlp.down_proj.weight"):
            cut = (0 if wrong == "down_proj split by output" else 1), even(config.intermediate_size,
                                                                           "intermediate_size", plan)
        elif name.endswith("mlp.gate.weight") and wrong == "router split":
            cut = 0, even(config.num_experts, "num_experts", plan)
        elif ".mlp.experts." in name:
            if plan.experts == "ep" and wrong != "ep ignored (experts always cut like MLPs)":
                cut = 0, even(config.num_experts, "num_experts", plan)
            else:
                dim = 2 if name.endswith("down_proj") else 1
                cut = dim, even(config.moe_intermediate_size, "moe_intermediate_size", plan)
        elif name == "lm_head.weight":
            if config.vocab_size % N == 0 or wrong in ("LM head split even when V is not a multiple of N",
                                                       "uneven split drops the remainder"):
                k = config.vocab_size // N
                cut = 0, slice(r * k, (r + 1) * k)
        elif name.endswith("embed_tokens.weight") and wrong == "embedding split":
            cut = 0, even(config.vocab_size, "vocab_size", plan)
        if cut is not None:
            full[cut[0]] = cut[1]
        return tuple(full)

    return SimpleNamespace(heads=heads, slices=slices)


# each wrong plan, and the test that must catch it (others may too)
MUTANTS = {
    "o_proj split by output": "test_attention_partials_sum_to_the_whole",
    "down_proj split by output": "test_mlp_partials_sum_to_the_whole",
    "q rows interleaved": "test_attention_partials_sum_to_the_whole",
    "KV heads split when the ranks outnumber them": "test_attention_partials_sum_to_the_whole",
    "KV head r % K": "test_attention_partials_sum_to_the_whole",
    "QK-Norm split": "test_attention_partials_sum_to_the_whole",
    "uneven split drops the remainder": "test_uneven_sizes_are_refused",
    "router split": "test_moe_partials_sum_to_the_whole",
    "ep ignored (experts always cut like MLPs)": "test_moe_partials_sum_to_the_whole",
    "LM head split even when V is not a multiple of N": "test_lm_head",
    "embedding split": "test_every_element_has_its_owners",
}


test_a_correct_answer_passes, test_each_wrong_answer_is_caught = mutation_tests(T, solution, MUTANTS)
