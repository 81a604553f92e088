"""A static KV cache: preallocated once, written in place, so shapes never change while decoding."""
import copy

import torch


class KVCache:
    """Keys and values for every layer, (B, H_kv, S, D) each, S = max_len slots.

    Slot j holds the token at sequence index j of the batch (left padding included). The model writes the
    slots named by `input_pos` and attends over all of them, with a mask hiding slots not yet written.
    """

    def __init__(self, config, batch_size: int, max_len: int, device=None, dtype=torch.bfloat16):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len

    def update(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H_kv, T, D) at slots input_pos (T,); return the whole cache of this layer."""
        self.k[layer].index_copy_(2, input_pos, k)
        self.v[layer].index_copy_(2, input_pos, v)
        return self.k[layer], self.v[layer]

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values, for a kernel that writes the new slot itself (flash_decode.py)."""
        return self.k[layer], self.v[layer]

    def prefix(self, n: int) -> "KVCache":
        """The first n slots of every layer, sharing storage: attention over it reads only those slots.

        A decode step at position p needs slots 0..p; a prefix a little longer than p (masked as usual)
        costs a fraction of a pass over the whole preallocated cache.
        """
        if not 0 < n <= self.max_len:
            raise ValueError(f"prefix of {n} slots: this cache has {self.max_len}")
        view = copy.copy(self)
        view.k, view.v, view.max_len = [t[:, :, :n] for t in self.k], [t[:, :, :n] for t in self.v], n
        return view

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
