"""Exercise 5 · the whole model, against transformers' Qwen3ForCausalLM and Qwen3MoeForCausalLM holding the same
weights (saved by transformers in the official layout, loaded into yours by name)."""
import pytest
import torch
from safetensors.torch import load_file

import minqwen3

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=10000.0)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, mlp_only_layers=[1],  # layer 1 dense
           norm_topk_prob=True)  # transformers defaults to False, Qwen3 (and minqwen3) use True
CASES = {"dense-untied": dict(tie_word_embeddings=False), "dense-tied": dict(tie_word_embeddings=True),
         "moe-untied": dict(tie_word_embeddings=False, **MOE), "moe-tied": dict(tie_word_embeddings=True, **MOE)}


def hf_and_official(tmp_path, case, seed=0):
    """A random transformers model and its weights as the official checkpoint stores them (key -> tensor)."""
    kw = {**TINY, **CASES[case]}
    torch.manual_seed(seed)
    if "num_experts" in kw:
        hf = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**kw))
    else:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw))
    with torch.no_grad():  # norms start at 1 and would hide a misplaced one
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    hf.eval().save_pretrained(tmp_path)
    return hf, kw, load_file(tmp_path / "model.safetensors")


def stacked(official, tied):
    """Official keys -> the model's parameter names: per-expert tensors stacked into (E, out, in)."""
    out, experts = {}, {}
    for k, t in official.items():
        parts = k.split(".")
        if ".mlp.experts." in k:  # model.layers.i.mlp.experts.j.proj.weight
            experts.setdefault(".".join(parts[:5] + [parts[6]]), {})[int(parts[5])] = t
        else:
            out[k] = t
    for name, rows in experts.items():
        out[name] = torch.stack([rows[j] for j in range(len(rows))])
    if tied:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def build(impl, tmp_path, case):
    hf, kw, official = hf_and_official(tmp_path, case)
    ours = impl.Qwen3(minqwen3.Qwen3Config(**kw))
    ours.load_state_dict(stacked(official, kw["tie_word_embeddings"]), strict=True)  # the names must be the keys
    return ours.eval(), hf


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(impl, tmp_path, case):
    ours, hf = build(impl, tmp_path, case)
    ids = torch.randint(0, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(ids)
        want = hf(ids).logits
    assert got.shape == (2, 11, TINY["vocab_size"]) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_head_tied_or_not(impl, tmp_path, case):
    """Tied: the head is the embedding Parameter itself (changing one changes the other), counted once."""
    ours, hf = build(impl, tmp_path, case)
    tied = CASES[case]["tie_word_embeddings"]
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("case", ["dense-tied", "moe-untied"])
def test_causal(impl, tmp_path, case):
    """A token's logits depend on it and the tokens before it only."""
    ours, _ = build(impl, tmp_path, case)
    ids = torch.randint(0, TINY["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        a, b = ours(ids), ours(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_yarn_config_reaches_rope(impl, tmp_path):
    """rope_scaling (YaRN) from the config reaches the rotary tables: logits as transformers' (a fresh dict for each
    config: transformers writes rope_theta into it)."""
    yarn = lambda: {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}  # noqa: E731
    kw = {**TINY, "tie_word_embeddings": False}
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw, rope_scaling=yarn())).eval()
    hf.save_pretrained(tmp_path)
    ours = impl.Qwen3(minqwen3.Qwen3Config(**kw, rope_scaling=yarn()))
    ours.load_state_dict(stacked(load_file(tmp_path / "model.safetensors"), False), strict=True)
    ids = torch.randint(0, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
