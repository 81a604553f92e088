"""Qwen3Config: official config.json files, transformers-5 spellings, presets, parameter counts."""
import json
import re
import subprocess
import sys

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
    with pytest.raises(ValueError, match=r"config.json: config field num_attention_heads = 3: must be a multiple of "
                                         r"num_key_value_heads \(2\)"):
        Qwen3Config.from_pretrained(tmp_path)


# ---------------------------------------------------------------- every field validated, with a ValueError naming it
BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
BAD = [  # (field, value, extra fields, what the message must say)
    ("hidden_size", "16", {}, "must be an integer >= 1"), ("hidden_size", 16.0, {}, "integer"),
    ("hidden_size", None, {}, "integer"), ("hidden_size", True, {}, "integer"), ("hidden_size", -16, {}, ">= 1"),
    ("vocab_size", 0, {}, ">= 1"), ("intermediate_size", [48], {}, "integer"), ("num_hidden_layers", -1, {}, ">= 1"),
    ("num_hidden_layers", 2.5, {}, "integer"), ("num_attention_heads", 0, {}, ">= 1"),
    ("num_key_value_heads", 0, {}, ">= 1"), ("num_key_value_heads", 3, {}, "multiple of num_key_value_heads"),
    ("head_dim", 7, {}, "even"), ("head_dim", 0, {}, "even integer"), ("max_position_embeddings", "1k", {}, "integer"),
    ("rope_theta", 0, {}, "a number > 1"), ("rope_theta", -1e6, {}, "> 1"), ("rope_theta", float("nan"), {}, "> 1"),
    ("rope_theta", "1e6", {}, "number"), ("rms_norm_eps", -1, {}, "a number > 0"), ("rms_norm_eps", 0, {}, "> 0"),
    ("rms_norm_eps", float("inf"), {}, "> 0"), ("rope_scaling", {"rope_type": "yarn"}, {}, "factor must be"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 0.5}, {}, "factor must be a number >= 1"),
    ("rope_scaling", {"type": "yarn", "factor": "4"}, {}, "factor"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 0}, {}, "original_max"),
    ("rope_scaling", {"rope_type": "dynamic", "factor": 2}, {}, "not supported"), ("rope_scaling", [4], {}, "object"),
    ("decoder_sparse_step", 0, MOE, ">= 1"), ("num_experts", -4, {}, ">= 0"),
    ("num_experts_per_tok", 5, MOE, "1..num_experts"), ("num_experts_per_tok", 0, MOE, ">= 1"),
    ("moe_intermediate_size", None, MOE, "integer"), ("mlp_only_layers", [0, -1], MOE, "layer indices"),
    ("mlp_only_layers", "0", MOE, "layer indices"), ("tie_word_embeddings", "false", {}, "true or false"),
    ("attention_bias", 1, {}, "true or false"), ("hidden_act", "gelu", {}, "silu"),
    ("eos_token_id", -1, {}, "token id"), ("eos_token_id", "151645", {}, "token id"),
    ("attention_dropout", 2, {}, "0..1"), ("torch_dtype", 16, {}, "dtype name"),
    ("sliding_window", -5, {}, "integer >= 0 or null"),
    ("use_sliding_window", True, {"sliding_window": 8, "max_window_layers": 1}, "sliding-window attention"),
    ("use_sliding_window", True, {"sliding_window": 8, "max_window_layers": 2, **MOE}, "sliding-window attention"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4, "partial_rotary_factor": 0.5}, {},
     "partial_rotary_factor not supported"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4, "mscale": -1}, {}, "mscale must be a number > 0"),
]


def _case_id(case):
    return f"{case[0]}={case[1]!r}"


@pytest.mark.parametrize("field,value,extra,says", BAD, ids=[_case_id(c) for c in BAD])
def test_every_field_is_validated_with_its_name_and_value(tmp_path, field, value, extra, says):
    d = {**BASE, **extra, field: value}
    (tmp_path / "config.json").write_text(json.dumps(d))
    shown = field if field != "num_key_value_heads" or value != 3 else "num_attention_heads"
    message = rf"config field {shown} = {re.escape(repr(d[shown]))}: .*{re.escape(says)}"
    with pytest.raises(ValueError, match=rf"config.json: {message}"):
        Qwen3Config.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):  # built in Python too, not only read from a file
        Qwen3Config(**d)


def test_validation_survives_python_O(tmp_path):
    """The checks are exceptions, not asserts: python -O (which strips asserts) still refuses every bad config."""
    cases = json.dumps([[{**BASE, **extra, field: value}, field] for field, value, extra, _ in BAD
                        if value == value])  # NaN does not survive JSON
    script = ("import json, sys\nfrom minqwen3 import Qwen3Config\nfor d, field in json.loads(sys.argv[1]):\n"
              "    try:\n        Qwen3Config(**d)\n        print('ACCEPTED', field)\n"
              "    except ValueError as e:\n        print('refused', e)\n")
    r = subprocess.run([sys.executable, "-O", "-c", script, cases], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(BAD) - 1, r.stderr
    assert all(line.startswith("refused config field ") for line in lines), [x for x in lines if "ACCEPTED" in x]


def test_valid_variants_still_load():
    for d in ({}, MOE, {**MOE, "mlp_only_layers": [], "decoder_sparse_step": 2}, {"rope_theta": 1e6},
              {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
              {"rope_scaling": {"rope_type": "default"}}, {"eos_token_id": [1, 2], "bos_token_id": None},
              {"torch_dtype": None, "sliding_window": None, "max_window_layers": 28}):
        Qwen3Config(**BASE, **d)


def test_a_window_transformers_would_fill_in_is_refused_too(tmp_path):
    """use_sliding_window true with no sliding_window or max_window_layers in the file: transformers' defaults
    (4096 from layer 28) window layers 28-29 of a 30-layer model, so minqwen3 refuses it as if they were written."""
    transformers = pytest.importorskip("transformers")
    d = {**BASE, "num_hidden_layers": 30, "use_sliding_window": True}
    assert transformers.Qwen3Config(**d).layer_types[28] == "sliding_attention"  # the oracle windows them
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="use_sliding_window = True: sliding-window attention.*4096.*28"):
        Qwen3Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**d, "num_hidden_layers": 20}))  # no layer from 28 on
    assert Qwen3Config.from_pretrained(tmp_path).num_hidden_layers == 20


def test_yarn_in_rope_parameters_beside_a_null_rope_scaling(tmp_path):
    """The official configs carry "rope_scaling": null; transformers 5's rope_parameters beside it still set YaRN."""
    d = {**BASE, "rope_scaling": None, "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                           "original_max_position_embeddings": 64, "rope_theta": 1e6}}
    (tmp_path / "config.json").write_text(json.dumps(d))
    c = Qwen3Config.from_pretrained(tmp_path)
    assert c.rope_scaling["factor"] == 4.0 and c.context_length == 256 and c.rope_theta == 1e6


def test_sliding_window_only_where_no_layer_uses_it(tmp_path):
    """transformers windows the layers from max_window_layers on when use_sliding_window is set (every layer of an
    MoE model); minqwen3 has no window, so it reads such a config only where no layer has one."""
    transformers = pytest.importorskip("transformers")
    assert Qwen3Config(**BASE, use_sliding_window=True, sliding_window=8, max_window_layers=2).use_sliding_window
    assert not Qwen3Config(**BASE, use_sliding_window=True, sliding_window=None).sliding_window
    hc = transformers.Qwen3Config(**{k: v for k, v in BASE.items()}, use_sliding_window=True, sliding_window=8,
                                  max_window_layers=1)
    hc.save_pretrained(tmp_path)  # transformers 5 writes layer_types
    with pytest.raises(ValueError, match="config.json: config field (layer_types|use_sliding_window) = .*sliding"):
        Qwen3Config.from_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d.update(use_sliding_window=False, layer_types=["full_attention"] * 2)
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert Qwen3Config.from_pretrained(tmp_path).num_hidden_layers == 2
