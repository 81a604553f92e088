"""Qwen3Config: official config.json files, transformers-5 spellings, presets, parameter counts."""
import json

import pytest
import torch

import minqwen3
from minqwen3 import Qwen3Config, count_params

# Qwen3 technical report, Tables 1-2 (and the model cards): total / non-embedding / active parameters
REPORT = {"Qwen3-0.6B": (0.6e9, 0.44e9), "Qwen3-1.7B": (1.7e9, 1.4e9), "Qwen3-4B": (4.0e9, 3.6e9),
          "Qwen3-8B": (8.2e9, 6.95e9), "Qwen3-14B": (14.8e9, 13.2e9), "Qwen3-32B": (32.8e9, 31.2e9)}


def test_presets_are_the_official_files(ref):
    for f in sorted((ref / "configs").glob("*.json")):
        official = json.loads(f.read_text())
        c = Qwen3Config.from_name(f"Qwen/{f.stem}")
        for k, v in official.items():
            if k != "transformers_version":
                assert getattr(c, k) == v, (f.name, k)


def test_parameter_counts_match_the_report():
    total, active = count_params(Qwen3Config.from_name("Qwen3-0.6B"))
    c = Qwen3Config.from_name("Qwen3-0.6B")
    assert round(total / 1e9, 3) == 0.596 and total == active
    assert round((total - c.vocab_size * c.hidden_size) / 1e9, 2) == 0.44
    for name, (t, non_emb) in REPORT.items():
        c = Qwen3Config.from_name(name)
        total, _ = count_params(c)
        emb = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
        assert abs(total - t) / t < 0.02, name
        assert abs(total - emb - non_emb) / non_emb < 0.03, name
    assert [round(x / 1e9, 2) for x in count_params(Qwen3Config.from_name("Qwen3-30B-A3B"))] == [30.53, 3.35]
    assert [round(x / 1e9, 1) for x in count_params(Qwen3Config.from_name("Qwen3-235B-A22B"))] == [235.1, 22.2]


@pytest.mark.parametrize("overrides", [dict(), dict(num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0]),
                                       dict(tie_word_embeddings=True, attention_bias=True)])
def test_count_params_equals_the_module(overrides):
    c = Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=16, **overrides)
    with torch.device("meta"):
        model = minqwen3.Qwen3(c)
    assert count_params(c)[0] == sum(p.numel() for p in model.parameters())


def test_transformers5_spellings_and_transformers_configs(tmp_path):
    transformers = pytest.importorskip("transformers")
    hc = transformers.Qwen3MoeConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     num_experts=6, num_experts_per_tok=2, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                  "original_max_position_embeddings": 64})
    hc.save_pretrained(tmp_path)  # transformers 5 writes rope_parameters and dtype
    c = Qwen3Config.from_pretrained(tmp_path)
    assert (c.num_experts, c.head_dim, c.rope_theta, c.rope_scaling["factor"]) == (6, 16, hc.rope_parameters["rope_theta"], 4.0)
    c2 = Qwen3Config.from_dict({"model_type": "qwen3_moe", "num_local_experts": 16, "dtype": "float16",
                                "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert (c2.num_experts, c2.torch_dtype, c2.rope_theta, c2.rope_scaling) == (16, "float16", 5e5, None)


def test_yarn_context_and_layer_choice():
    c = Qwen3Config.from_dict({**Qwen3Config.from_name("Qwen3-8B").to_dict(), "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})
    assert c.context_length == 131072
    m = Qwen3Config(num_experts=4, num_experts_per_tok=2, num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    assert [m.is_moe_layer(i) for i in range(6)] == [False, True, False, False, False, True]


def test_unknown_name_and_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'Qwen3-7B'"):
        Qwen3Config.from_name("Qwen3-7B")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Qwen3Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        Qwen3Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="'llama' is not a Qwen3 model"):
        Qwen3Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 8}))
    with pytest.raises(ValueError, match="lacks required field.*num_hidden_layers"):
        Qwen3Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 9,
                                                      "num_attention_heads": 3, "num_key_value_heads": 2}))
    with pytest.raises(ValueError, match=r"num_attention_heads \(3\) must be a multiple of num_key_value_heads \(2\)"):
        Qwen3Config.from_pretrained(tmp_path)
