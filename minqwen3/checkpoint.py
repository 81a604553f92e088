"""Load and save checkpoints in the official Hugging Face safetensors layout, without unpickling anything.

Loading builds the model on the meta device (no memory), then reads each tensor from disk straight
into its place on the target device and dtype: peak host memory is the model plus one tensor.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import Qwen3Config
from .model import Qwen3

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
FOLDER_HELP = ("a checkpoint folder holds config.json, model.safetensors (or model-*-of-*.safetensors "
               "with model.safetensors.index.json), and tokenizer.json for chat")
# a stacked (E, out, in) expert parameter in memory; on disk one tensor per expert, KEY.j.PROJ.weight
_STACKED = re.compile(r"(.*\.mlp\.experts)\.(gate_proj|up_proj|down_proj)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or tensor at fault."""


# ---------------------------------------------------------------- reading safetensors files
def read_header(path: Path) -> tuple[dict, int]:
    """The tensor table of a .safetensors file (name -> dtype, shape, data_offsets) and where data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    start = 8 + n
    for name, info in header.items():
        dtype = DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has unknown dtype {info.get('dtype')!r}")
        b, e = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= d
        if e - b != numel * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name} holds {e - b} bytes, its shape {info['shape']} needs "
                                  f"{numel * dtype.itemsize}: the file is corrupt")
        if start + e > size:
            raise CheckpointError(f"{path}: truncated: tensor {name} ends at byte {start + e}, the file has {size}")
    return header, start


def _read_into(f, offset: int, t: torch.Tensor, path: Path) -> None:
    """Fill the contiguous CPU tensor t with raw bytes from file offset (plain reads: no mmap pages kept)."""
    view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    f.seek(offset)
    while len(view):
        n = f.readinto(view)
        if not n:
            raise CheckpointError(f"{path}: truncated while reading at byte {f.tell()}")
        view = view[n:]


def _load_tensor(fh, path: Path, offset: int, src_dtype: torch.dtype, dst: torch.Tensor,
                 chunk_bytes: int = 64 * 2**20) -> None:
    """Read one stored tensor into dst (any device/dtype) through a bounded host buffer."""
    if dst.device.type == "cpu" and dst.dtype == src_dtype:
        return _read_into(fh, offset, dst, path)  # straight into place, no copy at all
    flat = dst.view(-1)
    step = max(1, chunk_bytes // src_dtype.itemsize)
    tmp = torch.empty(min(step, flat.numel()), dtype=src_dtype)
    for i in range(0, flat.numel(), step):  # chunks keep host memory flat when converting or moving
        part = tmp[: min(step, flat.numel() - i)]
        _read_into(fh, offset + i * src_dtype.itemsize, part, path)
        flat[i: i + part.numel()].copy_(part)


def checkpoint_files(path: Path) -> list[Path]:
    """The .safetensors files of a checkpoint folder, single or sharded (via the index)."""
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist; {FOLDER_HELP}")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = [path / f for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    hint = f" (found {', '.join(pickled)}: pickled weights are never loaded; convert them to safetensors)" if pickled else ""
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}{hint}; {FOLDER_HELP}")


# ---------------------------------------------------------------- loading
def _targets(model: nn.Module) -> dict[str, tuple[str, int | None, tuple]]:
    """Checkpoint key -> (parameter name, expert row or None, expected shape)."""
    out = {}
    for name, p in model.named_parameters():  # tied lm_head.weight is deduplicated away here
        m = _STACKED.fullmatch(name)
        if m:
            for j in range(p.shape[0]):
                out[f"{m[1]}.{j}.{m[2]}.weight"] = (name, j, tuple(p.shape[1:]))
        else:
            out[name] = (name, None, tuple(p.shape))
    return out


def load_weights(model: Qwen3, path: Path, device=None, dtype=None, strict: bool = True) -> Qwen3:
    """Read the checkpoint in `path` into a (meta or real) model, placing every tensor on device/dtype."""
    files = checkpoint_files(path)
    tables = {f: read_header(f) for f in files}
    targets = _targets(model)
    on_disk = {name: f for f, (header, _) in tables.items() for name in header}
    tied = model.config.tie_word_embeddings
    unexpected = [k for k in on_disk if k not in targets and not (tied and k == "lm_head.weight")]
    missing = [k for k in targets if k not in on_disk]
    if strict and (missing or unexpected):
        raise CheckpointError(f"checkpoint {path} does not match the config: missing tensors {missing[:10]}"
                              f"{' ...' if len(missing) > 10 else ''}, unexpected tensors {unexpected[:10]}"
                              f"{' ...' if len(unexpected) > 10 else ''}")
    for key, f in on_disk.items():
        if key in targets:
            shape = tuple(tables[f][0][key]["shape"])
            if shape != targets[key][2]:
                raise CheckpointError(f"tensor {key} in {f.name} has shape {list(shape)}, "
                                      f"the config expects {list(targets[key][2])}")
    params = dict(model.named_parameters())
    device = torch.device(device or "cpu")
    new = {}  # parameter name -> materialised tensor on the target device
    for f, (header, start) in tables.items():
        with open(f, "rb", buffering=0) as fh:
            for key, info in header.items():
                if key not in targets:
                    continue
                pname, row, _ = targets[key]
                p = params[pname]
                if pname not in new:
                    new[pname] = torch.empty(p.shape, device=device, dtype=dtype or DTYPES[info["dtype"]])
                dst = new[pname] if row is None else new[pname][row]
                _load_tensor(fh, f, start + info["data_offsets"][0], DTYPES[info["dtype"]], dst)
    for pname, t in new.items():
        mod_name, _, attr = pname.rpartition(".")
        model.get_submodule(mod_name)._parameters[attr] = nn.Parameter(t, requires_grad=False)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:  # only possible with strict=False
        raise CheckpointError(f"checkpoint {path} lacks {still_meta[:10]}; pass strict=True to see all")
    return model.to(device)  # moves the computed buffers (RoPE frequencies)


def from_pretrained(path: str | os.PathLike, device=None, dtype: torch.dtype | None = None,
                    strict: bool = True) -> Qwen3:
    """Load a checkpoint folder (official layout). dtype defaults to the dtype stored in the files."""
    path = Path(path)
    checkpoint_files(path)  # fail fast, with the folder's contents explained, before reading the config
    config = Qwen3Config.from_pretrained(path)
    with torch.device("meta"):
        model = Qwen3(config)
    return load_weights(model, path, device=device, dtype=dtype, strict=strict).eval()


# ---------------------------------------------------------------- saving
def state_dict_official(model: Qwen3) -> dict[str, torch.Tensor]:
    """The checkpoint keys and tensors, experts unstacked; tied lm_head left out (transformers re-ties it)."""
    out = {}
    for name, p in model.named_parameters():
        m = _STACKED.fullmatch(name)
        if m:
            for j in range(p.shape[0]):
                out[f"{m[1]}.{j}.{m[2]}.weight"] = p[j]
        else:
            out[name] = p
    return out


def save_pretrained(model: Qwen3, path: str | os.PathLike, max_shard_bytes: int = 4 * 2**30,
                    dtype: torch.dtype | None = None) -> None:
    """Write config.json and model.safetensors (or shards plus index) so transformers can load them.

    Every file is written to a temporary name and renamed into place: never a half-written file.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = state_dict_official(model)
    shards, size = [[]], 0
    for k, t in tensors.items():
        nbytes = t.numel() * (dtype or t.dtype).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, keys in zip(names, shards):
        # clone: slices of one stacked tensor share storage, which safetensors refuses
        part = {k: tensors[k].detach().to("cpu", dtype or tensors[k].dtype).clone().contiguous() for k in keys}
        _atomic(path / name, lambda tmp: save_file(part, tmp, metadata={"format": "pt"}))
    if len(shards) > 1:
        total = sum(t.numel() * (dtype or t.dtype).itemsize for t in tensors.values())
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: n for n, keys in zip(names, shards) for k in keys}}
        _atomic(path / "model.safetensors.index.json",
                lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2) + "\n"))
    else:
        (path / "model.safetensors.index.json").unlink(missing_ok=True)
    for stale in [*path.glob("model-*-of-*.safetensors"), path / "model.safetensors"]:
        if stale.name not in names:  # files of an earlier save in another layout
            stale.unlink(missing_ok=True)
    config = model.config
    if dtype is not None:
        config = Qwen3Config.from_dict({**config.to_dict(), "torch_dtype": str(dtype).removeprefix("torch.")})
    _atomic(path / "config.json", lambda tmp: config.save(tmp))


def _atomic(dest: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
