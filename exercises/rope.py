"""Exercise 2 · Rotary position embeddings (RoPE) and YaRN.  Read notebooks/02_rope.ipynb first.

Check your work:  pytest exercises/test_rope.py --impl student
"""
import math

import torch
from torch import nn


def yarn_inv_freq(inv_freq: torch.Tensor, head_dim: int, base: float, factor: float, original_max: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = True) -> torch.Tensor:
    """YaRN's per-pair frequencies: keep the fast pairs, divide the slow ones by `factor`, ramp in between.

    inv_freq (head_dim/2,): the plain RoPE frequencies. Returns the new frequencies, same shape, float32.

    Pair d counts as fast when its wavelength 2*pi/inv_freq[d] fits at least beta_fast (32) times into
    original_max, as slow when it fits at most beta_slow (1) times. The pair index where the wavelength fits r times:
        d(r) = head_dim * log(original_max / (r * 2 * pi)) / (2 * log(base)).
    lo = d(beta_fast), hi = d(beta_slow), rounded outwards (floor, ceil) when truncate, then clamped to
    [0, head_dim - 1] (if lo == hi, hi += 0.001). ramp[d] = clamp((d - lo) / (hi - lo), 0, 1):
        new[d] = inv_freq[d] * (1 - ramp[d]) + inv_freq[d] / factor * ramp[d].
    (Written in another order the result may differ from transformers' in the last bit; position 131,071 multiplies
    that into ~1e-2 in cos and sin, which the tests allow for.)
    """
    raise NotImplementedError("exercise 2: yarn_inv_freq")


class RotaryEmbedding(nn.Module):
    """Turns integer positions into the cos and sin tables that `apply_rope` rotates q and k with.

    head_dim: 128 in every Qwen3. theta: the base, 1e6 in Qwen3. scaling: None, or the config's rope_scaling,
    e.g. {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None, max_position: int = 40960):
        """Frequencies inv_freq[i] = 1 / theta ** (2i / head_dim), i = 0 .. head_dim/2 - 1, float32, kept as a
        non-persistent buffer named inv_freq (computed, never loaded). self.scale = 1.0, except with YaRN.

        scaling: None, or a dict whose "rope_type" (or older "type") is "yarn" or "default"; anything else:
        ValueError. YaRN: inv_freq = yarn_inv_freq(...) with scaling["factor"], original_max =
        scaling.get("original_max_position_embeddings", max_position), beta_fast / beta_slow if given (else 32 / 1)
        and truncate (default True); self.scale = scaling.get("attention_factor") or 0.1 * ln(factor) + 1.
        """
        super().__init__()
        raise NotImplementedError("exercise 2: RotaryEmbedding.__init__")

    def forward(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (B, T) integer positions -> cos, sin, each (B, 1, T, head_dim) in `dtype`, times self.scale.

        The angle of pair i at position m is m * inv_freq[i]; both halves of the head share the angles (dimension
        i and i + head_dim/2 form pair i). Positions reach 131,072: the angles must be computed in float32 (bf16
        cannot even tell 100,000 from 100,001), and only the finished cos and sin cast to `dtype`.
        """
        raise NotImplementedError("exercise 2: RotaryEmbedding.forward")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D), cos and sin (B|1, 1, T, D) -> (B, H, T, D), x rotated: the pair (x[..., i], x[..., i + D/2])
    turns by the angle of pair i (the "rotate-half" layout of Qwen3's checkpoints, not pairs (2i, 2i+1))."""
    raise NotImplementedError("exercise 2: apply_rope")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# - RotaryEmbedding.forward: a = pos[..., None].float() * self.inv_freq   (B, T, D/2); emb = torch.cat([a, a], -1);
#   add the head axis with emb[:, None]; return (emb.cos() * self.scale).to(dtype), (emb.sin() * self.scale).to(dtype).
# - apply_rope: x1, x2 = x.chunk(2, dim=-1); return x * cos + torch.cat([-x2, x1], dim=-1) * sin.
# - yarn_inv_freq: torch.arange(head_dim // 2, dtype=torch.float32) are the pair indices d.
