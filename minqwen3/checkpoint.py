"""Load and save checkpoints in the official Hugging Face safetensors layout, without unpickling anything.

Loading builds the model on the meta device (no memory), then reads each tensor from disk straight
into its place on the target device and dtype: peak host memory is the model plus one tensor.
A checkpoint is untrusted input: the safetensors library validates each file's header, we add the dtype policy,
refuse shard paths that leave the folder, and compare the config with the tensors before building anything.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import Qwen3Config
from .model import Qwen3

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}  # weights only
INDEX = "model.safetensors.index.json"
FOLDER_HELP = ("a checkpoint folder holds config.json, model.safetensors (or model-*-of-*.safetensors "
               "with model.safetensors.index.json), and tokenizer.json for chat")
# a stacked (E, out, in) expert parameter in memory; on disk one tensor per expert, KEY.j.PROJ.weight
_STACKED = re.compile(r"(.*\.mlp\.experts)\.(gate_proj|up_proj|down_proj)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or tensor at fault."""


# ---------------------------------------------------------------- reading safetensors files
def read_header(path: Path) -> tuple[dict, int]:
    """The tensor table of a .safetensors file (name -> dtype, shape, data_offsets) and where data starts."""
    try:  # the library checks the header: valid JSON entries, offsets contiguous, in range and covering the data
        with safe_open(path, framework="pt"):
            pass
    except Exception as e:  # SafetensorError derives from Exception itself
        raise CheckpointError(f"{path}: not a valid safetensors file, or truncated ({e})") from None
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    for name, info in header.items():  # what the library allows and we do not: integer, bool, FP8 weights
        if info["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']}; weights must be one of "
                                  f"{', '.join(DTYPES)}")
    return header, 8 + n


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata in a .safetensors file's header ({} if none), the file checked as read_header checks it."""
    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # SafetensorError derives from Exception itself
        raise CheckpointError(f"{path}: not a valid safetensors file, or truncated ({e})") from None


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


def _finite(t: torch.Tensor, chunk: int = 2**20) -> bool:
    """No NaN or Inf in t; checked in chunks, so the check's own memory stays small."""
    return all(bool(torch.isfinite(c).all()) for c in t.reshape(-1).split(chunk))


def _inside(folder: Path, name, source: Path) -> Path:
    """folder/name, refused unless it stays in folder with symlinks resolved (a checkpoint is untrusted input).
    A Hugging Face cache snapshot (snapshots/<rev>/x -> ../../blobs/<hash>) may point into its own blobs folder."""
    root = folder.resolve()
    allowed = [root] + ([root.parents[1] / "blobs"] if root.parent.name == "snapshots" else [])
    if (not isinstance(name, str) or not name or Path(name).is_absolute()
            or not any((folder / name).resolve().is_relative_to(a) for a in allowed)):
        raise CheckpointError(f"{source}: file {name!r} is outside the checkpoint folder {folder}: refused")
    return folder / name


def _index_names(index: Path) -> list[str]:
    """The shard file names an index lists (unchecked: see _inside)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return list(dict.fromkeys(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None


def checkpoint_files(path: Path) -> list[Path]:
    """The .safetensors files of a checkpoint folder, single or sharded (via the index): model.safetensors where
    it exists, as transformers reads a folder (save_pretrained keeps to that order when it switches)."""
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist; {FOLDER_HELP}")
    index, single = path / INDEX, path / "model.safetensors"
    if single.is_file():  # transformers' order: the one file first, an index beside it unread
        return [_inside(path, "model.safetensors", path)]
    if index.is_file():
        files = [_inside(path, name, index) for name in _index_names(index)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
        return files
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    hint = f" (found {', '.join(pickled)}: pickled weights are never loaded; convert them to safetensors)" if pickled else ""
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}{hint}; {FOLDER_HELP}")


def read_tables(path: Path) -> dict[Path, tuple[dict, int]]:
    """Every file's validated header; a tensor stored in two files is an error, not "the last one wins"."""
    tables, seen = {}, {}
    for f in checkpoint_files(path):
        tables[f] = read_header(f)
        for name in tables[f][0]:
            if name in seen:
                raise CheckpointError(f"tensor {name} is stored twice, in {seen[name]} and {f}")
            seen[name] = f
    return tables


def check_config(config: Qwen3Config, tables: dict[Path, tuple[dict, int]], strict: bool = True) -> None:
    """Compare the config's sizes with the tensor headers before any module is built: a config.json that says a
    million layers fails here at once, instead of building them for minutes. The rest is checked tensor by tensor."""
    shapes = {k: info["shape"] for header, _ in tables.values() for k, info in header.items()}
    bare = [k for k in shapes if k.startswith(("layers.", "embed_tokens.", "norm."))]
    if bare and not any(k.startswith("model.") for k in shapes):
        raise CheckpointError(f"the checkpoint's tensor names lack the 'model.' prefix (e.g. {sorted(bare)[0]!r}): "
                              "it holds a base model saved without its causal-LM wrapper; minqwen3 reads the "
                              "official layout (model.embed_tokens.weight, model.layers.N..., lm_head.weight)")
    layers = [int(m[1]) for k in shapes if (m := re.match(r"model\.layers\.(\d+)\.", k))]
    experts = [int(m[1]) for k in shapes if (m := re.fullmatch(r".*\.mlp\.experts\.(\d+)\.\w+\.weight", k))]
    n_layers = max(layers, default=-1) + 1
    moe = any(config.is_moe_layer(i) for i in range(min(n_layers, config.num_hidden_layers)))
    found = {"num_hidden_layers": n_layers, "num_experts": max(experts, default=-1) + 1 if experts or moe else None,
             "head_dim": shapes.get("model.layers.0.self_attn.q_norm.weight", [None])[0]}
    for field, n in found.items():
        want = getattr(config, field)
        if n is not None and (want > n or (strict and want != n)):
            raise CheckpointError(f"config.json says {field} = {want}, but the checkpoint's tensors hold {n}")


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


def _head_as_embedding(tied: bool, names) -> bool:
    """A tied checkpoint that stores the shared matrix as lm_head.weight alone (a saver that kept the other name of
    the pair): it is the embedding, as transformers ties it."""
    return tied and "lm_head.weight" in names and "model.embed_tokens.weight" not in names


def check_tensors(model: Qwen3, path: Path, tables: dict, strict: bool = True,
                  dtype: torch.dtype | None = None) -> dict[str, tuple[str, int | None, tuple]]:
    """Compare the checkpoint's tensors with the model's parameters before reading any: names (missing,
    unexpected), shapes, and one dtype unless `dtype` converts them all. Returns _targets(model), with the stored
    name of a tied matrix kept as lm_head.weight alone pointing at the embedding."""
    targets = _targets(model)
    on_disk = {name: f for f, (header, _) in tables.items() for name in header}
    tied = model.config.tie_word_embeddings
    if _head_as_embedding(tied, on_disk):
        targets["lm_head.weight"] = targets.pop("model.embed_tokens.weight")
    unexpected = [k for k in on_disk if k not in targets and not (tied and k == "lm_head.weight")]
    missing = [k for k in targets if k not in on_disk]
    if strict and (missing or unexpected):
        raise CheckpointError(f"checkpoint {path} does not match the config: missing tensors {missing[:10]}"
                              f"{' ...' if len(missing) > 10 else ''}, unexpected tensors {unexpected[:10]}"
                              f"{' ...' if len(unexpected) > 10 else ''}")
    stored = {}  # dtype name -> one tensor stored in it
    for key, f in on_disk.items():
        if key in targets:
            stored.setdefault(tables[f][0][key]["dtype"], key)
            shape = tuple(tables[f][0][key]["shape"])
            if shape != targets[key][2]:
                raise CheckpointError(f"tensor {key} in {f.name} has shape {list(shape)}, "
                                      f"the config expects {list(targets[key][2])}")
    if tied and "lm_head.weight" in on_disk and "model.embed_tokens.weight" in on_disk:
        _same_as_embedding(tables, on_disk)
    if dtype is None and len(stored) > 1:  # "the dtype stored in the files" is ambiguous; matmuls would fail later
        raise CheckpointError(f"checkpoint {path} mixes dtypes ({', '.join(f'{d}: {k}' for d, k in stored.items())}); "
                              "pass dtype= to convert them all")
    return targets


def _same_as_embedding(tables: dict, on_disk: dict, chunk: int = 64 * 2**20) -> None:
    """A tied checkpoint that stores lm_head.weight anyway: fine if those are the embedding's bytes, an error if not
    (the model would use the embedding for both; transformers may use the stored head)."""
    def where(key: str) -> tuple[Path, dict, int]:  # its file, its header entry, its first byte in the file
        f = on_disk[key]
        info = tables[f][0][key]
        return f, info, tables[f][1] + info["data_offsets"][0]

    (fh, hh, a), (fe, he, b) = where("lm_head.weight"), where("model.embed_tokens.weight")
    same = hh["dtype"] == he["dtype"] and hh["shape"] == he["shape"]
    if same:
        nbytes = hh["data_offsets"][1] - hh["data_offsets"][0]
        with open(fh, "rb") as x, open(fe, "rb") as y:
            for i in range(0, nbytes, chunk):
                x.seek(a + i)
                y.seek(b + i)
                n = min(chunk, nbytes - i)
                if x.read(n) != y.read(n):
                    same = False
                    break
    if not same:
        raise CheckpointError(f"{fh.name} stores lm_head.weight, and it differs from model.embed_tokens.weight, but "
                              "config.json says tie_word_embeddings = true (one matrix for both): set it to false "
                              "to use the stored head, or drop the tensor")


def load_weights(model: Qwen3, path: Path, device=None, dtype=None, strict: bool = True,
                 tables: dict | None = None) -> Qwen3:
    """Read the checkpoint in `path` into a (meta or real) model, placing every tensor on device/dtype.
    NaN or Inf in a weight is an error: such a model only writes garbage."""
    tables = tables or read_tables(path)
    targets = check_tensors(model, path, tables, strict, dtype)
    tied = model.config.tie_word_embeddings
    params = dict(model.named_parameters())
    device = torch.device(device or "cpu")
    new, bad = {}, []  # parameter name -> materialised tensor on the target device; keys holding NaN/Inf
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
                if not _finite(dst):
                    bad.append(key)
    if bad:
        raise CheckpointError(f"checkpoint {path} has NaN or Inf values in {len(bad)} tensor(s): {bad[:10]}"
                              f"{' ...' if len(bad) > 10 else ''}; the model would only write garbage")
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
    tables = read_tables(path)
    check_config(config, tables, strict)
    with torch.device("meta"):
        model = Qwen3(config)
    return load_weights(model, path, device=device, dtype=dtype, strict=strict, tables=tables).eval()


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
                    dtype: torch.dtype | None = None, metadata: dict[str, str] | None = None) -> None:
    """Write config.json and model.safetensors (or shards plus index) so transformers can load them. `metadata`
    (strings) goes into every weight file's header beside {"format": "pt"}: train.save_checkpoint ties its trainer
    state to the weights with it.

    Stopped at any point (an error, a kill), the folder holds the whole old checkpoint or the whole new one: every
    file is written under a temporary name and renamed into place, new shards never take an existing file's name,
    and one step switches from old to new: model.safetensors renamed into place (it is read first), the index renamed
    into place over an old index, or, from one file to shards, that file removed once the index is there. Only then
    are the old weight files removed, and only those the old index lists. config.json follows the weights (replaced
    on its own).
    """
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(x, str) for kv in metadata.items() for x in kv)):
        raise TypeError(f"save_pretrained: metadata must be a dict of str to str, got {metadata!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    index = path / INDEX
    # the weight files there now, the only files a save may remove: model.safetensors, and the shards an index
    # lists (both, after a save stopped between its switch and its clean-up)
    old = [path / "model.safetensors"]
    try:
        old += [_inside(path, n, index) for n in _index_names(index)] if index.is_file() else []
    except CheckpointError:  # an unreadable or hostile old index: remove nothing it names
        pass
    tensors = state_dict_official(model)
    shards, size = [[]], 0
    for k, t in tensors.items():
        nbytes = t.numel() * (dtype or t.dtype).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    if n > 1 and any((path / name).exists() for name in names):  # the old checkpoint must stay whole until the switch
        tag = os.urandom(3).hex()
        names = [name.replace(".safetensors", f"-{tag}.safetensors") for name in names]
    for name, keys in zip(names, shards):
        # clone: slices of one stacked tensor share storage, which safetensors refuses
        part = {k: tensors[k].detach().to("cpu", dtype or tensors[k].dtype).clone().contiguous() for k in keys}
        atomic_write(path / name, lambda tmp: save_file(part, tmp, metadata={**(metadata or {}), "format": "pt"}))
    if n > 1:
        total = sum(t.numel() * (dtype or t.dtype).itemsize for t in tensors.values())
        weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
        atomic_write(index, lambda tmp: Path(tmp).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"))
    elif index.exists():
        os.unlink(index)  # the switch from old shards to the new single file
    for f in old:
        if f.name not in names and f.is_file():
            os.unlink(f)
    config = model.config
    if dtype is not None:
        config = Qwen3Config.from_dict({**config.to_dict(), "torch_dtype": str(dtype).removeprefix("torch.")})
    atomic_write(path / "config.json", lambda tmp: config.save(tmp))


def _file_mode() -> int:
    """The permissions open() gives a new file: 0o666 less the umask (from /proc: os.umask reads only by setting)."""
    try:
        umask = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(dest: Path, write: Callable[[Path], object]) -> None:
    """Write dest through a temporary file (`write(tmp)` fills it, in dest's folder), flushed to disk and then renamed
    over dest: readers see the old file or the new one, never a part. It gets the usual permissions (safetensors
    makes its files 0600: unreadable to a web server or another user of a published checkpoint)."""
    tmp = dest.parent / f".{dest.name}.{os.urandom(4).hex()}.tmp"
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
