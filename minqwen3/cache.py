"""A static KV cache per layer: preallocated once, written in place, so shapes never change while decoding."""
import copy

import torch


class KVCache:
    """One layer's keys and values, (B, H_kv, S, D) each, S = max_len slots. A model takes a list of them, one
    per layer (make_cache), and hands each layer its own.

    Slot j holds the token at sequence index j of the batch (left padding included). Attention writes the slots
    named by `input_pos` and attends over all of them, with a mask hiding slots not yet written.
    """

    def __init__(self, config, batch_size: int, max_len: int, device=None, dtype=torch.bfloat16,
                 kv_heads: int | None = None):
        # kv_heads: this process's share of the key/value heads under tensor parallelism (parallel.py)
        shape = (batch_size, kv_heads or config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def max_len(self) -> int:  # read off the tensor, so that torch.compile sees a symbol where the length varies
        return self.k.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at slots input_pos (T,); return the whole cache (B, H_kv, S, D) of each."""
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v

    def prefix(self, n: int) -> "KVCache":
        """The first n slots, sharing storage: attention over it reads only those slots.

        A decode step at position p needs slots 0..p; a prefix a little longer than p (masked as usual)
        costs a fraction of a pass over the whole preallocated cache.
        """
        if not 0 < n <= self.max_len:
            raise ValueError(f"prefix of {n} slots: this cache has {self.max_len}")
        view = copy.copy(self)
        view.k, view.v = self.k[:, :, :n], self.v[:, :, :n]
        return view


def make_cache(model, batch_size: int, max_len: int) -> list[KVCache]:
    """One KVCache per layer of `model`, on its device and in its dtype, for the key/value heads its attention
    holds (all of them, or this process's share under tensor parallelism)."""
    p = next(model.parameters())
    return [KVCache(model.config, batch_size, max_len, p.device, p.dtype, getattr(layer.self_attn, "n_kv", None))
            for layer in model.model.layers]  # n_kv: this rank's share under tensor parallelism
