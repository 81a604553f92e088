"""Checkpoint loading and saving: strictness, clear errors, memory use, atomic writes."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import minqwen3
from minqwen3 import CheckpointError, Qwen3Config

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, torch_dtype="float32")


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = minqwen3.Qwen3(Qwen3Config(**SMALL))
    minqwen3.save_pretrained(model, tmp_path)
    return model, tmp_path


def test_load_roundtrip_to_other_dtype(saved):
    model, path = saved
    again = minqwen3.from_pretrained(path, dtype=torch.bfloat16)
    assert again.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(again.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight.bfloat16())


def test_missing_unexpected_and_misshapen_tensors_are_named(saved):
    _, path = saved
    f = path / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    tensors["model.layers.1.extra.weight"] = torch.zeros(2)
    save_file(tensors, f)
    with pytest.raises(CheckpointError, match=r"missing tensors \['model.layers.1.self_attn.k_norm.weight'\], "
                                              r"unexpected tensors \['model.layers.1.extra.weight'\]"):
        minqwen3.from_pretrained(path)
    tensors = load_file(f)
    del tensors["model.layers.1.extra.weight"]
    tensors["model.layers.1.self_attn.k_norm.weight"] = torch.zeros(7)
    save_file(tensors, f)
    with pytest.raises(CheckpointError, match=r"tensor model.layers.1.self_attn.k_norm.weight in model.safetensors "
                                              r"has shape \[7\], the config expects \[8\]"):
        minqwen3.from_pretrained(path)


def test_truncated_and_corrupt_files_are_named(saved):
    _, path = saved
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    bad = r"model.safetensors: not a valid safetensors file, or truncated \(Error while deserializing header: "
    with pytest.raises(CheckpointError, match=bad + "incomplete metadata, file not fully covered"):
        minqwen3.from_pretrained(path)
    f.write_bytes(data[:8] + b"{garbage" + data[16:])
    with pytest.raises(CheckpointError, match=bad + "invalid JSON"):
        minqwen3.from_pretrained(path)
    f.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=bad + "header too small"):
        minqwen3.from_pretrained(path)


def test_missing_folder_files_and_pickles(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder .*nowhere does not exist; a checkpoint folder "
                                                r"holds config.json"):
        minqwen3.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"found pytorch_model.bin: pickled weights are never loaded"):
        minqwen3.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"names shard\(s\) that are missing: .*model-1.safetensors"):
        minqwen3.from_pretrained(tmp_path)


def test_tied_embeddings_load_with_or_without_lm_head(tmp_path):
    torch.manual_seed(0)
    model = minqwen3.Qwen3(Qwen3Config(**SMALL, tie_word_embeddings=True))
    minqwen3.save_pretrained(model, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    a = minqwen3.from_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")  # official small models store lm_head.weight too
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    b = minqwen3.from_pretrained(tmp_path)
    assert b.lm_head.weight is b.model.embed_tokens.weight
    ids = torch.arange(10)[None]
    assert torch.equal(a(ids), b(ids)) and torch.equal(a(ids), model(ids))


def test_a_tied_checkpoint_whose_stored_head_differs_is_refused(tmp_path):
    """tie_word_embeddings = true with an lm_head.weight that is not the embedding: minqwen3 would use the embedding
    (and transformers 5 the stored head): an error naming both, not a guess."""
    torch.manual_seed(0)
    minqwen3.save_pretrained(minqwen3.Qwen3(Qwen3Config(**SMALL, tie_word_embeddings=True)), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    head = tensors["model.embed_tokens.weight"].clone()
    head[-1, -1] += 1  # one value in the last chunk read
    save_file({**tensors, "lm_head.weight": head}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors stores lm_head.weight, and it differs from "
                                              "model.embed_tokens.weight.*tie_word_embeddings = true"):
        minqwen3.from_pretrained(tmp_path)
    save_file({**tensors, "lm_head.weight": head[:-1].clone()}, tmp_path / "model.safetensors")  # another shape
    with pytest.raises(CheckpointError, match="differs from model.embed_tokens.weight"):
        minqwen3.from_pretrained(tmp_path)


def test_a_tied_checkpoint_storing_only_the_head_loads_it_as_the_embedding(tmp_path):
    """The shared matrix saved under its other name, lm_head.weight alone (a saver that kept that name of the
    pair): transformers ties it into the embedding; so does minqwen3, with the same logits."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = minqwen3.Qwen3(Qwen3Config(**SMALL, tie_word_embeddings=True))
    minqwen3.save_pretrained(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors.pop("model.embed_tokens.weight")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    for strict in (True, False):
        ours = minqwen3.from_pretrained(tmp_path, strict=strict)
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(ours(ids), model(ids)) and torch.allclose(ours(ids), theirs(ids).logits, atol=1e-5)
    untied = json.loads((tmp_path / "config.json").read_text())  # untied, a head alone is a missing embedding
    (tmp_path / "config.json").write_text(json.dumps({**untied, "tie_word_embeddings": False}))
    with pytest.raises(CheckpointError, match="model.embed_tokens.weight"):
        minqwen3.from_pretrained(tmp_path)


def test_model_safetensors_is_read_before_an_index_as_transformers_does(tmp_path):
    """model.safetensors beside an index and its shards (two checkpoints in one folder, or a save stopped between
    its switch and its clean-up): the one file is read, as transformers reads it; the index is not opened."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    a, b = minqwen3.Qwen3(Qwen3Config(**SMALL)), minqwen3.Qwen3(Qwen3Config(**SMALL))
    minqwen3.save_pretrained(b, tmp_path / "b")
    minqwen3.save_pretrained(a, tmp_path, max_shard_bytes=20_000)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    ids = torch.arange(12)[None]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        got, want = minqwen3.from_pretrained(tmp_path)(ids), b(ids)
        assert torch.equal(got, want) and (hf(ids).logits - want).abs().max() < 1e-5
        assert not torch.allclose(got, a(ids))
    (tmp_path / "model.safetensors.index.json").write_text("{not json")  # never read while the file is there
    assert torch.equal(minqwen3.from_pretrained(tmp_path)(ids), want)


def test_tensor_names_without_the_model_prefix_are_named(saved):
    """A base model saved without its causal-LM wrapper (embed_tokens.weight, layers.0...): the message says what
    is wrong with the names, not that config.json's layer count is."""
    model, path = saved
    tensors = load_file(path / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="tensor names lack the 'model.' prefix"):
        minqwen3.from_pretrained(path)


def test_save_is_atomic_and_sharding_rewrites_cleanly(saved, monkeypatch):
    model, path = saved
    minqwen3.save_pretrained(model, path, max_shard_bytes=20_000)
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (path / "model.safetensors").exists()
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    minqwen3.save_pretrained(model, path)  # back to one file: stale shards and index go
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    before = (path / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(minqwen3.checkpoint, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        minqwen3.save_pretrained(model, path)
    assert (path / "model.safetensors").read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]  # no temp left


MEASURE = r"""
import sys, torch, minqwen3
def status(key):  # VmHWM is this process image's peak (ru_maxrss would carry the parent's over fork+exec)
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))
base = status('VmRSS:')
m = minqwen3.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
size = sum(p.numel() * p.element_size() for p in m.parameters())
print(size, status('VmHWM:') - base)
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_peak_host_memory_within_1_3x_model(tmp_path_factory, dtype):
    path = tmp_path_factory.getbasetemp() / "mem-ckpt"
    if not (path / "config.json").exists():  # ~300 MB of bf16 weights, built once for both cases
        cfg = Qwen3Config(vocab_size=151936, hidden_size=768, intermediate_size=2048, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=96, torch_dtype="bfloat16")
        with torch.device("meta"):
            model = minqwen3.Qwen3(cfg)
        model.to_empty(device="cpu").to(torch.bfloat16)
        for p in model.parameters():  # finite values: loading refuses NaN/Inf, which empty memory may hold
            p.detach().fill_(0.5)
        minqwen3.save_pretrained(model, path, max_shard_bytes=150 * 2**20)
        del model
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), dtype], capture_output=True, text=True, check=True)
    size, peak = map(int, out.stdout.split())
    assert size > 250e6
    assert peak < 1.3 * size, f"peak {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB model"
