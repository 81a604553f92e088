"""Parity with transformers: official-layout checkpoints of tiny random models load and agree in fp32."""
import pytest
import torch

import minqwen3
from conftest import hf_greedy, hf_model

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
CASES = {
    "dense-untied-gqa2": dict(),
    "dense-tied-mha": dict(tie_word_embeddings=True, num_key_value_heads=4),
    "dense-gqa3-headdim": dict(num_attention_heads=6, num_key_value_heads=2, head_dim=24),  # 24 != 64/6
    "dense-yarn": dict(rope_scaling=YARN),
    "moe-norm-topk": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
    "moe-no-norm-mlp-only": dict(num_experts=6, num_experts_per_tok=3, moe_intermediate_size=40,
                                 norm_topk_prob=False, mlp_only_layers=[1], tie_word_embeddings=True),
    "moe-sparse-step-2": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=2),
}


@pytest.mark.parametrize("name", CASES)
def test_logits_and_greedy_match_transformers(name, tmp_path):
    hf = hf_model(**CASES[name])
    hf.save_pretrained(tmp_path, max_shard_size="100KB")  # sharded: exercises the index
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = minqwen3.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(ids).logits, model(ids)
    assert got.shape == (2, 40, 320)
    assert (got - expected).abs().max().item() < 1e-4
    prompt = ids[:, :8]
    want = hf_greedy(hf, prompt, 20)
    assert torch.equal(minqwen3.generate(model, prompt, 20, stop_ids=()), want)


# config.json as transformers reads it, edited after saving: (the case's overrides, what to change in the file)
EDITS = {
    # the legacy "type" key inside transformers 5's rope_parameters
    "yarn-legacy-type-key": ({}, lambda d: d.update(rope_parameters={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0})),
    # DeepSeek-style mscale pair: YaRN's attention factor as their ratio
    "yarn-mscale": ({}, lambda d: d.update(rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 1.0,
        "mscale_all_dim": 0.5, "rope_theta": 10000.0})),
    # no rope_theta anywhere: transformers' 10000, not the official models' 1e6
    "no-rope-theta": ({}, lambda d: (d.pop("rope_parameters", None), d.pop("rope_theta", None))),
    # both spellings: the nested value wins
    "nested-rope-theta": ({}, lambda d: d.update(rope_theta=5e5, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 2e4})),
    # no norm_topk_prob in an MoE config: transformers' False
    "moe-no-norm-topk-field": (CASES["moe-norm-topk"], lambda d: d.pop("norm_topk_prob")),
}


@pytest.mark.parametrize("name", EDITS)
def test_config_json_edits_read_as_transformers_reads_them(name, tmp_path):
    import json
    transformers = pytest.importorskip("transformers")
    over, edit = EDITS[name]
    hf_model(**over).save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    edit(d)
    (tmp_path / "config.json").write_text(json.dumps(d))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    model = minqwen3.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, 320, (1, 100), generator=torch.Generator().manual_seed(4))  # past YaRN's 32
    with torch.no_grad():
        expected, got = hf(ids).logits, model(ids)
    assert (got - expected).abs().max().item() < 1e-4
    if name.startswith("yarn"):  # YaRN is on in both, with transformers' attention factor
        assert model.model.rotary_emb.scale == pytest.approx(hf.model.rotary_emb.attention_scaling) != 1.0


@pytest.mark.parametrize("name", ["dense-tied-mha", "moe-no-norm-mlp-only"])
def test_round_trip_minqwen3_to_transformers(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = minqwen3.Qwen3Config.from_dict({**hf_model(**CASES[name]).config.to_dict(), "torch_dtype": "float32"})
    torch.manual_seed(3)
    model = minqwen3.Qwen3(cfg).eval()
    minqwen3.save_pretrained(model, tmp_path, max_shard_bytes=200_000)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 320, (1, 24))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4
    again = minqwen3.from_pretrained(tmp_path)  # and back again, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("over", [{}, CASES["moe-sparse-step-2"]], ids=["dense", "moe"])
def test_a_split_layer_adds_the_residual_through_its_reduce(over):
    """parallel.shard gives every layer a reduce (its blocks' partial outputs summed over the ranks, the residual
    added; on GPUs in the all-reduce's kernel): the layer calls it for attention's and the MLP's outputs, each with
    the residual, and goes on with what it returns. One rank's reduce, residual + out, gives the unsplit model's
    fp32 logits bit for bit."""
    from test_fast import tiny
    model = tiny(**over)
    ids = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids)
        calls = []
        for layer in model.model.layers:
            layer.reduce = lambda out, residual: calls.append(out.shape == residual.shape) or residual + out
        assert torch.equal(model(ids), want)
        assert calls == [True] * 2 * len(model.model.layers)
        for layer in model.model.layers:  # what it returns is the layer's output: two ranks' equal halves
            layer.reduce = lambda out, residual: residual + 2 * out
        assert not torch.allclose(model(ids), want, atol=1e-3)


def test_moe_dispatch_paths_agree():
    """The gather path (decode) and the sort-by-expert path (prefill, training) compute the same thing."""
    from minqwen3.moe import Experts
    torch.manual_seed(0)
    ex = Experts(8, 16, 24)
    for p in ex.parameters():
        torch.nn.init.normal_(p)
    x, idx = torch.randn(5, 16), torch.stack([torch.randperm(8)[:3] for _ in range(5)])
    w = torch.rand(5, 3)
    ex.gather_max = 0
    sorted_out = ex(x, idx, w)
    ex.gather_max = 10**9
    gathered = ex(x, idx, w)
    # the oracle: every token through every chosen expert, one at a time
    ref = torch.stack([sum(w[n, s] * (torch.nn.functional.silu(ex.gate_proj[e] @ x[n]) * (ex.up_proj[e] @ x[n])
                                      @ ex.down_proj[e].T) for s, e in enumerate(idx[n].tolist()))
                       for n in range(5)])
    torch.testing.assert_close(sorted_out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gathered, ref, rtol=1e-5, atol=1e-5)


def test_bf16_logits_close_to_transformers(tmp_path):
    hf = hf_model(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = minqwen3.from_pretrained(tmp_path)
    assert model.lm_head.weight.dtype == torch.bfloat16  # the stored dtype by default
    ids = torch.randint(0, 320, (1, 16))
    with torch.no_grad():
        diff = (hf(ids).logits.float() - model(ids)).abs().max().item()
    assert diff < 0.05


def test_input_shape_is_checked():
    model = minqwen3.Qwen3(minqwen3.Qwen3Config(**{k: v for k, v in hf_model().config.to_dict().items()
                                                   if k in ("vocab_size", "hidden_size", "num_hidden_layers")}))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.zeros(5, dtype=torch.long))


def test_more_positions_than_the_context_are_refused():
    """model() called directly: more positions than the context (or the cache) holds is an error, not a silent
    extrapolation of RoPE past what the model was trained on. Checked on shapes, before any layer runs."""
    cfg = minqwen3.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=16)
    model = minqwen3.Qwen3(cfg).eval()
    calls = []
    model.model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    assert model(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 64)  # the whole context: fine
    for T in (17, 40):
        with pytest.raises(ValueError, match=rf"{T} positions.*context is 16 tokens"):
            model(torch.zeros(1, T, dtype=torch.long))
        with pytest.raises(ValueError, match=rf"{T} positions.*context is 16 tokens"):
            model.hidden_states(torch.zeros(1, T, dtype=torch.long))
    cache = minqwen3.make_cache(model, 1, 8)  # one KVCache per layer
    with pytest.raises(ValueError, match=r"12 positions.*cache holds 8"):
        model(torch.zeros(1, 12, dtype=torch.long), cache=cache, input_pos=torch.arange(12))
    assert calls == [1]
    # yarn stretches the context: 64 positions fit a factor-4 model of 16
    yarn = minqwen3.Qwen3(minqwen3.Qwen3Config(**{**cfg.__dict__, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 16}}))
    assert yarn(torch.zeros(1, 64, dtype=torch.long)).shape == (1, 64, 64)
    with pytest.raises(ValueError, match="65 positions.*context is 64"):
        yarn(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.float16])
def test_non_integer_ids_are_refused(dtype):
    model = minqwen3.Qwen3(minqwen3.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                head_dim=16))
    with pytest.raises(TypeError, match=f"input_ids.*{dtype}"):
        model(torch.zeros(1, 4, dtype=dtype))
