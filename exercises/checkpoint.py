"""Exercise 5b · Reading and writing the official checkpoint layout.  Read notebooks/05_model_and_weights.ipynb.

Check your work:  pytest exercises/test_checkpoint.py --impl student

The official layout (Hugging Face safetensors): a folder with config.json and model.safetensors, or, for big
models, shards model-00001-of-0000n.safetensors plus model.safetensors.index.json whose "weight_map" maps every
key to its shard. Keys are the module paths of the model (model.layers.3.self_attn.q_proj.weight, ...) except the
MoE experts: one tensor per expert on disk, model.layers.{i}.mlp.experts.{j}.{gate_proj,up_proj,down_proj}.weight
of shape (out, in), stacked in the model as model.layers.{i}.mlp.experts.{gate_proj,up_proj,down_proj} of shape
(E, out, in), row j = expert j. Use safetensors (safetensors.torch.load_file / save_file): never torch.load.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def state_dict_official(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the official checkpoint keys: experts unstacked (one (out, in) tensor per expert),
    and, when the head is tied to the embedding, no lm_head.weight (the embedding is stored once)."""
    raise NotImplementedError("exercise 5b: state_dict_official")


def load_weights(model: nn.Module, path: str | os.PathLike, device=None, dtype: torch.dtype | None = None,
                 strict: bool = True) -> nn.Module:
    """Fill `model`'s parameters from the checkpoint folder `path`; return the model.

    - single file or shards: model.safetensors where it exists (an index beside it is not read: transformers'
      order), else the files the index names;
    - experts: the file's experts.{j}.* tensor goes to row j of the stacked parameter;
    - strict: raise ValueError naming the missing keys (model parameters the files lack) and the unexpected
      ones (file keys the model has no place for). A tied model accepts an lm_head.weight in the file equal to the
      embedding (the official 0.6B-4B checkpoints store it) and raises ValueError naming lm_head.weight for one
      that differs; its head stays the embedding;
    - a tensor whose shape differs from the parameter's: ValueError naming the key, strict or not;
    - dtype: convert to it (default: keep the file's dtype); device: where the parameters go (default CPU).
    """
    raise NotImplementedError("exercise 5b: load_weights")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# - Files: path / "model.safetensors" if it exists; otherwise json.load path / "model.safetensors.index.json" and
#   read each file named in index["weight_map"].values() once.
# - A tied model's stored lm_head.weight: torch.equal(it, the file's model.embed_tokens.weight), else ValueError.
# - Expert keys: re.fullmatch(r"(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight", key) gives the
#   parameter name m[1] + "." + m[3] and the row int(m[2]). Sort rows by the number, not the string ("10" < "2").
# - Expected keys: go through model.named_parameters() (a tied head appears once: it is the embedding) and expand
#   each stacked expert parameter into its E per-expert keys.
# - Copy with torch.no_grad(): param[j].copy_(tensor) converts dtype; or build new tensors and assign
#   nn.Parameter(...) when the dtype or device changes. Re-tie afterwards if you replaced the embedding.
