"""Checkpoints as untrusted input, saves as something that must never lose data (issue 11).

A save stopped at any file (an error, or a real SIGKILL) leaves the whole old checkpoint or the whole new one; a
save removes only files of the checkpoint it replaces; no path in a checkpoint reaches outside its folder; headers
are validated by the safetensors library and our dtype policy; NaN/Inf weights and absurd configs are named errors.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import minqwen3
from minqwen3 import CheckpointError, Qwen3Config
from minqwen3 import checkpoint as ck

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, torch_dtype="float32")
MOE = dict(SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
# (old layout, new layout) as max_shard_bytes; None: one file. 30 kB gives 3 shards of this model, 40 kB gives 2.
TRANSITIONS = [(None, None), (None, 30_000), (30_000, 30_000), (30_000, None), (30_000, 40_000)]


def model(seed, **kw):
    torch.manual_seed(seed)
    return minqwen3.Qwen3(Qwen3Config(**{**SMALL, **kw}))


def which(path, old, new) -> str:
    """'old' or 'new': whose weights the folder loads as, exactly; anything else fails the test."""
    got = minqwen3.from_pretrained(path).state_dict()
    for name, m in (("old", old), ("new", new)):
        if all(torch.equal(got[k], v) for k, v in m.state_dict().items()):
            return name
    raise AssertionError(f"{path} loads as a mix of the old and new weights")


def save(m, path, shard):
    minqwen3.save_pretrained(m, path, **({} if shard is None else {"max_shard_bytes": shard}))


# ------------------------------------------------------------------------------------------ data loss
@pytest.mark.parametrize("old_shard,new_shard", TRANSITIONS)
def test_a_save_failing_at_any_file_leaves_old_or_new(tmp_path, monkeypatch, old_shard, new_shard):
    old, new = model(0), model(1)
    seen = []
    for k in range(1, 100):  # the k-th file operation of the save raises (disk full, permission, ...)
        path = tmp_path / f"k{k}"
        save(old, path, old_shard)
        calls = [0]

        def fail_kth(f):
            def op(*a, **kw):
                calls[0] += 1
                if calls[0] == k:
                    raise OSError(f"injected failure at file operation {k}")
                return f(*a, **kw)
            return op
        with monkeypatch.context() as mp:
            mp.setattr(ck, "save_file", fail_kth(ck.save_file))
            mp.setattr(ck.os, "replace", fail_kth(os.replace))
            mp.setattr(ck.os, "unlink", fail_kth(os.unlink))
            try:
                save(new, path, new_shard)
                done = True
            except OSError as e:
                assert "injected" in str(e)
                done = False
        seen.append(which(path, old, new))
        assert not [p.name for p in path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
        if done:
            break
        save(new, path, new_shard)  # the next save after a failure works and cleans up
        assert which(path, old, new) == "new"
    assert seen[0] == "old" and seen[-1] == "new" and done, seen
    assert seen == sorted(seen, key=["old", "new"].index)  # once switched, never back


KILL = r"""
import os, shutil, signal, sys, torch, minqwen3
from minqwen3 import checkpoint as ck
torch.set_num_threads(1)
old, new, work, shard = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
model = minqwen3.from_pretrained(new)
refs = {name: minqwen3.from_pretrained(p).state_dict() for name, p in (("old", old), ("new", new))}
for k in range(1, 100):
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(old, work)
    pid = os.fork()
    if pid == 0:  # the child saves and is killed by SIGKILL just before its k-th file operation
        n = [0]
        def kill_kth(f):
            def op(*a, **kw):
                n[0] += 1
                if n[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return f(*a, **kw)
            return op
        ck.save_file, os.replace, os.unlink = kill_kth(ck.save_file), kill_kth(os.replace), kill_kth(os.unlink)
        minqwen3.save_pretrained(model, work, **({} if shard == "None" else {"max_shard_bytes": int(shard)}))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    got = minqwen3.from_pretrained(work).state_dict()
    names = [name for name, ref in refs.items() if all(torch.equal(got[k], v) for k, v in ref.items())]
    print("killed" if killed else "finished", names[0] if len(names) == 1 else "MIXED", flush=True)
    if not killed:
        break
"""


@pytest.mark.parametrize("old_shard,new_shard", TRANSITIONS[1:])
def test_a_save_killed_at_any_file_leaves_old_or_new(tmp_path, old_shard, new_shard):
    save(model(0), tmp_path / "old", old_shard)
    save(model(1), tmp_path / "new", None)
    r = subprocess.run([sys.executable, "-c", KILL, str(tmp_path / "old"), str(tmp_path / "new"),
                        str(tmp_path / "work"), str(new_shard)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")[:-1]
    assert len(lines) >= 4 and lines[0] == "killed old" and lines[-1] == "finished new", lines
    assert all(line in ("killed old", "killed new") for line in lines[:-1]), lines


def test_save_removes_only_files_of_the_checkpoint_it_replaces(tmp_path):
    keep = ["model-best-of-sweep.safetensors", "model-00001-of-00099.safetensors", "tokenizer.json", "notes.txt"]
    for name in keep:
        (tmp_path / name).write_bytes(b"the user's")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    outside.write_bytes(b"not ours")
    m = model(0)
    for shard in (30_000, None, 40_000, 30_000, 30_000, None):  # every change of layout
        save(m, tmp_path, shard)
        assert which(tmp_path, m, m) == "old"
        index = tmp_path / "model.safetensors.index.json"
        listed = set(json.loads(index.read_text())["weight_map"].values()) if index.exists() else {"model.safetensors"}
        ours = {p.name for p in tmp_path.iterdir()} - set(keep) - {"config.json", index.name}
        assert ours == listed  # no stale shard of an earlier save is left either
    for name in keep:
        assert (tmp_path / name).read_bytes() == b"the user's"
    # a hostile old index naming a file outside the folder: the save must not delete it
    save(m, tmp_path, 30_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = f"../{outside.name}"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    save(m, tmp_path, None)
    assert outside.read_bytes() == b"not ours"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_files_get_the_usual_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        save(model(0), tmp_path / "one", None)
        save(model(0), tmp_path / "sharded", 30_000)
    finally:
        os.umask(old)
    files = [*(tmp_path / "one").iterdir(), *(tmp_path / "sharded").iterdir()]
    assert len(files) == 2 + 5  # config and weights; config, index and 3 shards
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o666 & ~umask)}


# ------------------------------------------------------------------------------------------ paths outside the folder
@pytest.fixture
def sharded(tmp_path):
    """A 3-shard checkpoint in tmp_path/ckpt, and a valid copy of its first shard outside the folder."""
    path = tmp_path / "ckpt"
    save(model(0), path, 30_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    first = index["weight_map"]["model.embed_tokens.weight"]
    outside = tmp_path / "elsewhere" / "x.safetensors"
    outside.parent.mkdir()
    shutil.copy(path / first, outside)  # a real shard: opened, it would load without complaint
    return path, index, first, outside


def write_index(path, index):
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("where", ["../elsewhere/x.safetensors", "../../ckpt/../elsewhere/x.safetensors",
                                   "ABSOLUTE", "sub/../../elsewhere/x.safetensors", "SYMLINK"])
def test_shard_paths_that_leave_the_folder_are_refused(sharded, monkeypatch, where):
    path, index, first, outside = sharded
    if where == "ABSOLUTE":
        where = str(outside)
    elif where == "SYMLINK":  # a link inside the folder that resolves outside it
        (path / "link.safetensors").symlink_to(outside)
        where = "link.safetensors"
    for k, v in index["weight_map"].items():
        if v == first:
            index["weight_map"][k] = where
    write_index(path, index)
    opened = []
    monkeypatch.setattr(ck, "safe_open", lambda *a, **k: opened.append(a) or pytest.fail("opened"))
    with pytest.raises(CheckpointError, match=rf"file '{where}' is outside the checkpoint folder .*ckpt: refused"):
        minqwen3.from_pretrained(path)
    assert not opened


def test_single_file_symlink_outside_is_refused_links_inside_are_fine(tmp_path):
    m = model(0)
    save(m, tmp_path / "a", None)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "config.json", tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").symlink_to(tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="'model.safetensors' is outside the checkpoint folder"):
        minqwen3.from_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").rename(tmp_path / "a" / "weights.bin.safetensors")
    (tmp_path / "a" / "model.safetensors").symlink_to("weights.bin.safetensors")  # stays inside: fine
    assert which(tmp_path / "a", m, m) == "old"
    # the Hugging Face cache layout: snapshots/<rev>/model.safetensors -> ../../blobs/<hash>
    snap, blobs = tmp_path / "hub" / "snapshots" / "abc", tmp_path / "hub" / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    shutil.copy(tmp_path / "a" / "weights.bin.safetensors", blobs / "0123")
    shutil.copy(tmp_path / "a" / "config.json", snap)
    (snap / "model.safetensors").symlink_to("../../blobs/0123")
    assert which(snap, m, m) == "old"


@pytest.mark.parametrize("index", [[], {"weight_map": []}, {"weight_map": {"a": 3}}, {"weight_map": {"a": ""}},
                                   {"weight_map": {"a": None}}, "x", {"weight_map": {"a": {"b": "c"}}}])
def test_malformed_indexes_are_named(tmp_path, index):
    save(model(0), tmp_path, 30_000)  # sharded: the index is what the folder is read by
    write_index(tmp_path, index)
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: "):
        minqwen3.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ header trust
def rewrite(f, edit):
    """Rewrite a .safetensors file's JSON header with edit(header) -> header (or raw bytes); the data stays."""
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = edit(json.loads(raw[8:8 + n]))
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    f.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])


def set_entry(name, **kw):
    def edit(h):
        h[name].update(kw)
        return h
    return edit


EMB, NORM = "model.embed_tokens.weight", "model.norm.weight"
BAD_HEADERS = {  # what the safetensors library refuses; our message names the file
    "overlapping offsets": lambda h: set_entry(NORM, data_offsets=h[EMB]["data_offsets"][:1] + [
        h[EMB]["data_offsets"][0] + 128])(h),
    "negative offset": set_entry(NORM, data_offsets=[-128, 0]),
    "offset past the end": lambda h: set_entry(NORM, data_offsets=[h[NORM]["data_offsets"][0],
                                                                 h[NORM]["data_offsets"][1] + 4])(h),
    "list header": lambda h: [1, 2, 3],
    "nested JSON": lambda h: ("[" * 100_000 + "]" * 100_000).encode(),
    "no data_offsets": lambda h: {k: {kk: vv for kk, vv in v.items() if kk != "data_offsets"} if k == NORM else v
                                  for k, v in h.items()},
    "shape of strings": set_entry(NORM, shape=["32"]),
    "shape not matching the bytes": set_entry(NORM, shape=[31]),
    "unknown dtype": set_entry(NORM, dtype="F33"),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_headers_the_library_refuses_are_named_errors(tmp_path, case):
    save(model(0), tmp_path, None)
    rewrite(tmp_path / "model.safetensors", BAD_HEADERS[case])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a valid safetensors file, or truncated \("):
        minqwen3.from_pretrained(tmp_path)


@pytest.mark.parametrize("stored", [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool,
                                    torch.float8_e4m3fn])
def test_integer_bool_and_fp8_weights_are_refused(tmp_path, stored):
    save(model(0), tmp_path, None)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors[NORM] = torch.ones(32).to(stored)
    save_file(tensors, f)
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor {NORM} has dtype \w+; weights must be one "
                                              r"of BF16, F16, F32, F64"):
        minqwen3.from_pretrained(tmp_path)


@pytest.mark.parametrize("other", [torch.float16, torch.bfloat16, torch.float64])
def test_mixed_float_dtypes_are_named_unless_a_dtype_is_asked_for(tmp_path, other):
    m = model(0)
    save(m, tmp_path, None)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors[NORM] = tensors[NORM].to(other)
    save_file(tensors, f)
    code = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}[other]
    with pytest.raises(CheckpointError, match=rf"mixes dtypes \(.*\b{code}: {NORM}.*\); pass dtype="):
        minqwen3.from_pretrained(tmp_path)
    got = minqwen3.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(got.model.norm.weight, m.model.norm.weight.to(other).float())
    assert torch.equal(got.lm_head.weight, m.lm_head.weight)


@pytest.mark.parametrize("name", [EMB, "model.layers.1.self_attn.k_proj.weight"])
def test_a_tensor_stored_in_two_shards_is_an_error(sharded, name):
    path, index, first, _ = sharded
    files = sorted(set(index["weight_map"].values()))
    home = index["weight_map"][name]
    other = next(f for f in files if f != home)
    tensors = load_file(path / other)
    tensors[name] = torch.zeros_like(load_file(path / home)[name])  # "last one wins" would load zeros silently
    save_file(tensors, path / other)
    with pytest.raises(CheckpointError, match=rf"tensor {name} is stored twice, in .*model-0000\d-of-00003"):
        minqwen3.from_pretrained(path)


@pytest.mark.parametrize("bad,where,moe", [(float("nan"), EMB, False), (float("inf"), NORM, False),
                                           (-float("inf"), "lm_head.weight", False),
                                           (float("nan"), "model.layers.1.mlp.experts.3.down_proj.weight", True)])
def test_nan_and_inf_weights_are_named_at_load(tmp_path, bad, where, moe):
    save(model(0, **(MOE if moe else {})), tmp_path, None)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors[where].view(-1)[5] = bad
    save_file(tensors, f)
    with pytest.raises(CheckpointError, match=rf"NaN or Inf values in 1 tensor\(s\): \['{where}'\]"):
        minqwen3.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ config against headers
@pytest.mark.parametrize("field,value,moe", [("num_hidden_layers", 1_000_000, False), ("num_hidden_layers", 3, False),
                                             ("num_experts", 10_000_000, True), ("head_dim", 2**28, False),
                                             ("num_hidden_layers", 1, False)])
def test_config_is_checked_against_the_tensors_before_building(tmp_path, field, value, moe):
    save(model(0, **(MOE if moe else {})), tmp_path, None)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    if field == "head_dim":
        config["num_attention_heads"] = config["num_key_value_heads"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    t = time.perf_counter()
    found = {"num_hidden_layers": 2, "num_experts": 4, "head_dim": 8}[field]
    with pytest.raises(CheckpointError, match=rf"config.json says {field} = {value}, but the checkpoint's tensors "
                                              rf"hold {found}"):
        minqwen3.from_pretrained(tmp_path)
    assert time.perf_counter() - t < 2
