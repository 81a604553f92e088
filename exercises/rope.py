"""Exercise 2 · Rotary position embeddings (RoPE) and YaRN.  Read notebooks/02_rope.ipynb, then fill in the TODOs.

Check your work:  pytest exercises/test_rope.py --impl student
"""
import math

import torch
from torch import nn


def yarn_inv_freq(inv_freq: torch.Tensor, head_dim: int, base: float, factor: float, original_max: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = True) -> torch.Tensor:
    """YaRN's per-pair frequencies: keep the fast pairs, divide the slow ones by `factor`, ramp in between.

    inv_freq (head_dim/2,): the plain RoPE frequencies. Returns the new frequencies, same shape.

    TODO:
    1. The pair index d whose wavelength 2*pi/inv_freq[d] fits r times into original_max solves
           d = head_dim * log(original_max / (r * 2 * pi)) / (2 * log(base)).
       lo = that d for r = beta_fast (32 turns), hi = that d for r = beta_slow (1 turn).
    2. If truncate: lo = floor(lo), hi = ceil(hi). Then clamp: lo = max(lo, 0), hi = min(hi, head_dim - 1).
       If lo == hi, add 0.001 to hi (no division by zero).
    3. ramp[d] = clamp((d - lo) / (hi - lo), 0, 1) for d = 0 .. head_dim/2 - 1   (0: fast pair, 1: slow pair)
    4. return inv_freq * (1 - ramp) + inv_freq / factor * ramp
    """
    raise NotImplementedError("exercise 2: yarn_inv_freq")


class RotaryEmbedding(nn.Module):
    """Turns integer positions into the cos and sin tables that `apply_rope` rotates q and k with.

    head_dim: 128 in every Qwen3. theta: the base, 1e6 in Qwen3. scaling: None, or the config's rope_scaling,
    e.g. {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None, max_position: int = 40960):
        """TODO:
        1. inv_freq[i] = 1 / theta ** (2i / head_dim) for i = 0 .. head_dim/2 - 1, in float32.
        2. self.scale = 1.0. If scaling is a YaRN dict ("rope_type", or the older "type", equal to "yarn"):
           inv_freq = yarn_inv_freq(...) with scaling["factor"],
           scaling.get("original_max_position_embeddings", max_position), beta_fast/beta_slow if given
           (else 32 / 1), truncate (default True); and
           self.scale = scaling.get("attention_factor") or 0.1 * math.log(factor) + 1.0.
           Any other rope_type except "default": raise ValueError.
        3. self.register_buffer("inv_freq", inv_freq, persistent=False)  (computed, never loaded)
        """
        super().__init__()
        raise NotImplementedError("exercise 2: RotaryEmbedding.__init__")

    def forward(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (B, T) integer positions -> cos, sin, each (B, 1, T, head_dim) in `dtype`.

        TODO: angles = pos (as float32) times inv_freq, shape (B, T, head_dim/2); repeat them for both halves of
        the head (torch.cat([a, a], -1)); add the head axis; return cos * self.scale and sin * self.scale,
        cast to dtype at the very end (positions reach 10^5: the angles need float32).
        """
        raise NotImplementedError("exercise 2: RotaryEmbedding.forward")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) -> x rotated: pair (x[..., i], x[..., i + D/2]) turns by the angle of pair i.

    TODO: the "rotate-half" layout used by Qwen3's checkpoints:
        x1, x2 = the first and second halves of the last dimension
        return x * cos + cat([-x2, x1]) * sin
    """
    raise NotImplementedError("exercise 2: apply_rope")
