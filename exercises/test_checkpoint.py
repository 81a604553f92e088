"""Exercise 5b · the checkpoint layout, against files written by transformers' save_pretrained (the official
layout) and transformers' own logits for them."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import minqwen3

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, torch_dtype="float32")
# 12 experts: expert 10 must land in row 10, not after expert 1 (the order of the keys as strings)
MOE = dict(num_experts=12, num_experts_per_tok=2, moe_intermediate_size=8, mlp_only_layers=[0])


def save_hf(path, moe=False, tied=False, seed=0):
    kw = {**TINY, "tie_word_embeddings": tied, **(MOE if moe else {})}
    torch.manual_seed(seed)
    hf = (transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**kw)) if moe else
          transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw)))
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    hf.eval().save_pretrained(path)
    return hf


def blank(path):
    """A model of the checkpoint's config with random weights (the package's Qwen3: the loader is under test)."""
    torch.manual_seed(123)
    return minqwen3.Qwen3(minqwen3.Qwen3Config.from_pretrained(path))


def logits(model, vocab=TINY["vocab_size"]):
    ids = torch.arange(10)[None] * 7 % vocab
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("moe,tied", [(False, False), (False, True), (True, False)], ids=["dense", "tied", "moe"])
def test_loaded_model_matches_transformers(impl, tmp_path, moe, tied):
    hf = save_hf(tmp_path, moe, tied)
    model = impl.load_weights(blank(tmp_path), tmp_path)
    torch.testing.assert_close(logits(model), logits(hf), rtol=1e-4, atol=1e-4)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_experts_land_in_their_rows(impl, tmp_path):
    save_hf(tmp_path, moe=True)
    on_disk = load_file(tmp_path / "model.safetensors")
    model = impl.load_weights(blank(tmp_path), tmp_path)
    stacked = model.model.layers[1].mlp.experts.up_proj
    for j in range(12):
        assert torch.equal(stacked[j], on_disk[f"model.layers.1.mlp.experts.{j}.up_proj.weight"]), f"expert {j}"


@pytest.mark.parametrize("moe,tied", [(False, True), (True, False)], ids=["tied", "moe"])
def test_state_dict_official_is_the_file(impl, tmp_path, moe, tied):
    save_hf(tmp_path, moe, tied)
    on_disk = load_file(tmp_path / "model.safetensors")
    model = impl.load_weights(blank(tmp_path), tmp_path)
    sd = impl.state_dict_official(model)
    assert sorted(sd) == sorted(on_disk), "the same keys as the official file (a tied head is not stored)"
    for k, t in on_disk.items():
        assert torch.equal(sd[k], t), k


def test_strict_names_missing_and_unexpected(impl, tmp_path):
    save_hf(tmp_path, moe=True)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.experts.3.down_proj.weight"]
    tensors["model.layers.1.mlp.shared_expert.weight"] = torch.zeros(2)
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"experts\.3\.down_proj") as err:
        impl.load_weights(blank(tmp_path), tmp_path)
    assert "shared_expert" in str(err.value), "name the unexpected key too"
    del tensors["model.layers.1.mlp.shared_expert.weight"]
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"experts\.3\.down_proj"):
        impl.load_weights(blank(tmp_path), tmp_path)
    tensors["model.layers.1.mlp.experts.3.down_proj.weight"] = torch.zeros(32, 8)
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, f)
    impl.load_weights(blank(tmp_path), tmp_path, strict=False)  # unexpected keys are ignored when not strict


def test_tied_model_accepts_a_stored_head(impl, tmp_path):
    """The official Qwen3-0.6B stores lm_head.weight although it is tied: load it, keep the head tied."""
    save_hf(tmp_path, tied=True)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, f)
    model = impl.load_weights(blank(tmp_path), tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_tied_model_refuses_a_stored_head_that_differs(impl, tmp_path):
    """tie_word_embeddings with a different lm_head.weight in the file: the model would silently use the embedding
    for the head (transformers 5 uses the stored one)."""
    save_hf(tmp_path, tied=True)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1.0
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        impl.load_weights(blank(tmp_path), tmp_path)


def test_model_safetensors_is_read_before_an_index(impl, tmp_path):
    """A folder holding model.safetensors and an index (with its shards) is read as transformers reads it: the
    single file. Here the index names a shard of other weights."""
    hf = save_hf(tmp_path)
    other = load_file(tmp_path / "model.safetensors")
    save_file({k: v + 1.0 for k, v in other.items()}, tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in other}}))
    model = impl.load_weights(blank(tmp_path), tmp_path)
    torch.testing.assert_close(logits(model), logits(hf), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strict", [True, False])
def test_wrong_shape_is_named(impl, tmp_path, strict):
    save_hf(tmp_path)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.0.self_attn.k_norm.weight"] = torch.ones(7)
    save_file(tensors, f)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_norm\.weight"):
        impl.load_weights(blank(tmp_path), tmp_path, strict=strict)


def test_shards_and_dtype(impl, tmp_path):
    hf = save_hf(tmp_path, moe=True)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in halves.items():
        save_file({k: tensors[k] for k in ks}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: name for name, ks in halves.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    model = impl.load_weights(blank(tmp_path), tmp_path)
    torch.testing.assert_close(logits(model), logits(hf), rtol=1e-4, atol=1e-4)
    half = impl.load_weights(blank(tmp_path), tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
