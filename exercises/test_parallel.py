"""Exercise · the tensor/expert parallel plan, checked without processes: N ranks simulated one after the other.

Each rank gets a copy of an unsplit minqwen3 block (attention, dense MLP, MoE) or of a whole tiny model holding only
the slices your plan gives it; its output is a partial sum, and the N partials added (what the all-reduce does)
must be the unsplit output in float32 within 1e-5. The LM head's slices, put side by side (the all-gather), must be
the whole logits. And the bookkeeping: every element of a split weight held by exactly one rank, replicated ones
by all, a KV head by exactly N / K ranks when the ranks outnumber the KV heads; the local shapes written out.
"""
import copy

import pytest
import torch
from torch import nn

from minqwen3.attention import Attention
from minqwen3.config import Qwen3Config
from minqwen3.mlp import MLP
from minqwen3.model import Qwen3
from minqwen3.moe import SparseMoE
from minqwen3.parallel import Plan
from minqwen3.rope import RotaryEmbedding

TOL = dict(rtol=1e-5, atol=1e-5)
BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)


def config(**over) -> Qwen3Config:
    return Qwen3Config(**{**BASE, **over})


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Weights of scale 1 / sqrt(fan-in) (outputs of order 1, so 1e-5 means something), norm gains in 0.5..1.5
    (ones would hide a wrong norm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return module.eval()


def as_slices(sl, shape, name):
    assert isinstance(sl, tuple) and len(sl) == len(shape) and all(isinstance(s, slice) for s in sl), \
        f"slices({name!r}, {shape}) returned {sl!r}: expected a tuple of {len(shape)} slice objects"
    return sl


def rank_copy(impl, module: nn.Module, prefix: str, c: Qwen3Config, plan: Plan) -> nn.Module:
    """A copy of module holding only this rank's slices of its parameters (named prefix + their names)."""
    m = copy.deepcopy(module)
    for name, p in list(m.named_parameters()):
        sl = as_slices(impl.slices(prefix + name, tuple(p.shape), c, plan), tuple(p.shape), prefix + name)
        owner, _, attr = name.rpartition(".")
        m.get_submodule(owner)._parameters[attr] = nn.Parameter(p.detach()[sl].clone(), requires_grad=False)
    for a in m.modules():  # attention: the head counts follow the slices
        if isinstance(a, Attention):
            a.n_heads, a.n_kv = a.q_proj.weight.shape[0] // c.head_dim, a.k_proj.weight.shape[0] // c.head_dim
    return m


def held_experts(impl, name: str, c: Qwen3Config, plan: Plan) -> list[int]:
    shape = (c.num_experts, c.moe_intermediate_size, c.hidden_size)
    return list(range(c.num_experts))[impl.slices(name, shape, c, plan)[0]]


def expert_parallel(moe: SparseMoE, experts: list[int], E: int) -> SparseMoE:
    """Expert parallel at run time (what minqwen3.parallel.shard hooks in): global expert ids -> this rank's rows;
    a choice of another rank's expert gets weight 0."""
    local = torch.full((E,), -1, dtype=torch.long)
    local[experts] = torch.arange(len(experts))

    def hook(module, args):
        x, idx, w = args
        row = local[idx]
        return x, row.clamp(min=0), w * (row >= 0).to(w.dtype)
    moe.experts.register_forward_pre_hook(hook)
    return moe


def rope_inputs(c: Qwen3Config, B: int = 2, T: int = 7, seed: int = 1):
    x = torch.randn(B, T, c.hidden_size, generator=torch.Generator().manual_seed(seed))
    cos, sin = RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings)(
        torch.arange(T)[None], torch.float32)
    return x, cos, sin


@pytest.mark.parametrize("H,K,N", [(8, 2, 2), (8, 2, 4), (8, 2, 8), (4, 4, 2), (8, 1, 4), (8, 8, 8), (4, 2, 1)])
def test_attention_partials_sum_to_the_whole(impl, H, K, N):
    """q, k, v by heads, o_proj by the same heads' columns; N > K: each rank a copy of its group's KV head."""
    c = config(num_attention_heads=H, num_key_value_heads=K)
    full = randomise(Attention(c))
    x, cos, sin = rope_inputs(c)
    with torch.no_grad():
        want = full(x, cos, sin)
        partials = []
        for r in range(N):
            plan = Plan(r, N)
            q0, hq, k0, hk = impl.heads(c, plan)
            assert (hq, hk) == (H // N, max(K // N, 1)), f"heads() of rank {r} of {N}: {hq} query, {hk} KV heads"
            part = rank_copy(impl, full, "model.layers.0.self_attn.", c, plan)
            assert (part.n_heads, part.n_kv) == (hq, hk), f"rank {r}: the slices hold other head counts than heads()"
            partials.append(part(x, cos, sin))
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(sum(partials), want, **TOL)


@pytest.mark.parametrize("N", [2, 4, 8])
def test_mlp_partials_sum_to_the_whole(impl, N):
    """gate and up by rows, down by the same columns: silu(gate) * up stays local."""
    c = config()
    full = randomise(MLP(c.hidden_size, c.intermediate_size))
    x, _, _ = rope_inputs(c)
    with torch.no_grad():
        want = full(x)
        partials = [rank_copy(impl, full, "model.layers.1.mlp.", c, Plan(r, N))(x) for r in range(N)]
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(sum(partials), want, **TOL)


@pytest.mark.parametrize("experts", ["tp", "ep"])
@pytest.mark.parametrize("N", [2, 4])
def test_moe_partials_sum_to_the_whole(impl, N, experts):
    """tp: every expert cut like an MLP. ep: E/N whole experts per rank. Either way the router is whole, so every
    rank routes every token the same way (its router logits are the unsplit ones)."""
    c = config(**MOE)
    full = randomise(SparseMoE(c))
    x, _, _ = rope_inputs(c)
    prefix, E, I = "model.layers.0.mlp.", c.num_experts, c.moe_intermediate_size
    with torch.no_grad():
        want, want_logits = full(x)
        partials, held = [], []
        for r in range(N):
            plan = Plan(r, N, experts)
            part = rank_copy(impl, full, prefix, c, plan)
            local = tuple(part.experts.gate_proj.shape)
            if experts == "ep":
                assert local == (E // N, I, c.hidden_size), f"ep, rank {r}: experts.gate_proj {local}, not E/N whole"
                held.append(held_experts(impl, prefix + "experts.gate_proj", c, plan))
                part = expert_parallel(part, held[-1], E)
            else:
                assert local == (E, I // N, c.hidden_size), f"tp, rank {r}: experts.gate_proj {local}"
            y, logits = part(x)
            torch.testing.assert_close(logits, want_logits, **TOL)
            partials.append(y)
    if experts == "ep":
        assert held == [list(range(r * E // N, (r + 1) * E // N)) for r in range(N)], \
            f"ep: rank r holds experts r*E/N .. (r+1)*E/N - 1, got {held}"
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(sum(partials), want, **TOL)


@pytest.mark.parametrize("vocab,N", [(320, 4), (322, 4), (320, 1)], ids=["split", "replicated", "one-rank"])
def test_lm_head(impl, vocab, N):
    """Split by vocabulary rows when N divides V (the ranks' logits side by side, in rank order, are the whole);
    else whole on every rank."""
    c = config(vocab_size=vocab)
    head = randomise(nn.Linear(c.hidden_size, vocab, bias=False))
    x, _, _ = rope_inputs(c)
    with torch.no_grad():
        want = head(x)
        parts = [rank_copy(impl, head, "lm_head.", c, Plan(r, N))(x) for r in range(N)]
    if vocab % N:
        for p in parts:
            torch.testing.assert_close(p, want, **TOL)
    else:
        assert all(p.shape[-1] == vocab // N for p in parts)
        torch.testing.assert_close(torch.cat(parts, -1), want, **TOL)


def sharded_logits(impl, model: Qwen3, ids: torch.Tensor, plan_of) -> torch.Tensor:
    """The whole model on N simulated ranks: each layer's attention and MLP outputs summed over the ranks (the
    all-reduce), everything between them (residual, norms) on every rank; the LM head's slices gathered."""
    c = model.config
    N = plan_of(0).world
    ranks = [rank_copy(impl, model, "", c, plan_of(r)) for r in range(N)]
    for r, m in enumerate(ranks):
        for i, layer in enumerate(m.model.layers):
            if layer.is_moe and plan_of(r).experts == "ep":
                expert_parallel(layer.mlp, held_experts(impl, f"model.layers.{i}.mlp.experts.gate_proj", c,
                                                        plan_of(r)), c.num_experts)
    x, cos, sin, mask = model.inputs(ids, torch.arange(ids.shape[1]))
    for i, layer in enumerate(model.model.layers):
        local = [m.model.layers[i] for m in ranks]
        x = x + sum(lay.self_attn(lay.input_layernorm(x), cos, sin, mask) for lay in local)
        ys = [lay.mlp(lay.post_attention_layernorm(x)) for lay in local]
        x = x + sum(y[0] if layer.is_moe else y for y in ys)
    parts = [m.lm_head(m.model.norm(x)) for m in ranks]
    return parts[0] if parts[0].shape[-1] == c.vocab_size else torch.cat(parts, -1)


@pytest.mark.parametrize("experts,N", [("tp", 2), ("tp", 4), ("ep", 4), ("tp", 8)])
def test_whole_model(impl, experts, N):
    """A MoE layer and a dense one, 8 query and 2 KV heads (8 ranks: each KV head copied on 4)."""
    c = config(**MOE, mlp_only_layers=[1])
    model = randomise(Qwen3(c))
    ids = torch.randint(0, c.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids)
        got = sharded_logits(impl, model, ids, lambda r: Plan(r, N, experts))
    torch.testing.assert_close(got, want, **TOL)


REPLICATED = ("norm.weight", "mlp.gate.weight", "embed_tokens.weight")  # on every rank, whole


@pytest.mark.parametrize("experts", ["tp", "ep"])
@pytest.mark.parametrize("N", [1, 2, 4, 8])
def test_every_element_has_its_owners(impl, N, experts):
    """Count each weight element's holders: 1 for a split weight, N for a replicated one, N / K for a KV head when
    the N ranks outnumber the K KV heads."""
    c = config(**MOE, mlp_only_layers=[1])
    with torch.device("meta"):
        names = {n: tuple(p.shape) for n, p in Qwen3(c).named_parameters()}
    K = c.num_key_value_heads
    for name, shape in names.items():
        count = torch.zeros(shape, dtype=torch.int32)
        for r in range(N):
            count[as_slices(impl.slices(name, shape, c, Plan(r, N, experts)), shape, name)] += 1
        if N == 1 or name.endswith(REPLICATED):
            want = N
        elif name.endswith(("k_proj.weight", "v_proj.weight")) and N > K:
            want = N // K
        else:
            want = 1
        assert (count == want).all(), f"{name} with {N} ranks ({experts}): elements held by " \
                                      f"{sorted(set(count.flatten().tolist()))} ranks, expected {want}"


LOCAL_SHAPES = {  # on 2 ranks, experts "tp": C 64, 8 query heads of 16, 2 KV heads, I 96, 8 experts of 32, V 320
    "model.embed_tokens.weight": (320, 64),
    "model.layers.0.input_layernorm.weight": (64,),
    "model.layers.0.self_attn.q_proj.weight": (4 * 16, 64),
    "model.layers.0.self_attn.k_proj.weight": (1 * 16, 64),
    "model.layers.0.self_attn.v_proj.weight": (1 * 16, 64),
    "model.layers.0.self_attn.o_proj.weight": (64, 4 * 16),
    "model.layers.0.self_attn.q_norm.weight": (16,),
    "model.layers.0.self_attn.k_norm.weight": (16,),
    "model.layers.0.mlp.gate.weight": (8, 64),
    "model.layers.0.mlp.experts.gate_proj": (8, 16, 64),
    "model.layers.0.mlp.experts.up_proj": (8, 16, 64),
    "model.layers.0.mlp.experts.down_proj": (8, 64, 16),
    "model.layers.1.mlp.gate_proj.weight": (48, 64),
    "model.layers.1.mlp.up_proj.weight": (48, 64),
    "model.layers.1.mlp.down_proj.weight": (64, 48),
    "model.norm.weight": (64,),
    "lm_head.weight": (160, 64),
}


def test_local_shapes(impl):
    c = config(**MOE, mlp_only_layers=[1])
    with torch.device("meta"):
        names = {n: tuple(p.shape) for n, p in Qwen3(c).named_parameters()}
    for name, want in LOCAL_SHAPES.items():
        for r in range(2):
            got = tuple(torch.empty(names[name], device="meta")[impl.slices(name, names[name], c, Plan(r, 2))].shape)
            assert got == want, f"{name} on rank {r} of 2: {got}, expected {want}"


@pytest.mark.parametrize("N,kv_heads", [(2, [(0, 4), (4, 4)]), (8, [(r, 1) for r in range(8)]),
                                        (16, [(r // 2, 1) for r in range(16)])], ids=["2", "8", "16"])
def test_heads_of_qwen3_32b(impl, N, kv_heads):
    """64 query heads, 8 KV heads: on 16 ranks, ranks 2g and 2g + 1 share (a copy of) KV head g."""
    c = Qwen3Config.from_name("Qwen3-32B")
    got = [impl.heads(c, Plan(r, N)) for r in range(N)]
    assert [(q0, hq) for q0, hq, _, _ in got] == [(r * 64 // N, 64 // N) for r in range(N)]
    assert [(k0, hk) for _, _, k0, hk in got] == kv_heads


@pytest.mark.parametrize("field,over,name,shape,N,experts", [
    ("num_attention_heads", {}, "model.layers.0.self_attn.q_proj.weight", (128, 64), 3, "tp"),
    ("num_key_value_heads", dict(num_attention_heads=6, num_key_value_heads=3),
     "model.layers.0.self_attn.k_proj.weight", (48, 64), 2, "tp"),
    ("intermediate_size", dict(intermediate_size=90), "model.layers.1.mlp.up_proj.weight", (90, 64), 4, "tp"),
    ("intermediate_size", dict(intermediate_size=90), "model.layers.1.mlp.down_proj.weight", (64, 90), 4, "tp"),
    ("moe_intermediate_size", dict(MOE, moe_intermediate_size=30), "model.layers.0.mlp.experts.down_proj",
     (8, 64, 30), 4, "tp"),
    ("num_experts", dict(MOE, num_experts=6), "model.layers.0.mlp.experts.up_proj", (6, 32, 64), 4, "ep"),
], ids=["heads", "kv-heads", "intermediate", "intermediate-down", "moe-intermediate", "experts"])
def test_uneven_sizes_are_refused(impl, field, over, name, shape, N, experts):
    """A remainder dropped would lose weights silently: the plan refuses, naming the field."""
    c = config(**over)
    with pytest.raises(ValueError, match=field):
        impl.slices(name, shape, c, Plan(1, N, experts))
