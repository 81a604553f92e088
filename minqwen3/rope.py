"""Rotary position embeddings (rotate-half layout), with YaRN context extension."""
import math

import torch
from torch import nn

from .config import rope_type


def yarn_inv_freq(inv_freq: torch.Tensor, head_dim: int, base: float, factor: float, original_max: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = True) -> torch.Tensor:
    """YaRN (Peng et al. 2023): keep high frequencies, interpolate low ones by `factor`, ramp in between."""
    def dim_for(rotations: float) -> float:  # the dimension whose wavelength fits `rotations` times in original_max
        return head_dim * math.log(original_max / (rotations * 2 * math.pi)) / (2 * math.log(base))
    lo, hi = dim_for(beta_fast), dim_for(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    if lo == hi:
        hi += 0.001  # avoid dividing by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device=inv_freq.device) - lo) / (hi - lo)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (unchanged frequency), 0: interpolate (divided by factor)
    return inv_freq / factor * (1 - keep) + inv_freq * keep


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention factor for a context stretched `factor` times: 1 + 0.1 * mscale * ln(factor)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None, max_position: int = 40960):
        super().__init__()
        # this buffer is computed, never loaded: under a meta-device context (loading) make it on the CPU
        dev = "cpu" if torch.get_default_device().type == "meta" else None
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=dev) / head_dim)
        self.scale = 1.0
        rtype = rope_type(scaling)
        if rtype == "yarn":
            factor = scaling["factor"]
            original = scaling.get("original_max_position_embeddings", max_position)
            inv_freq = yarn_inv_freq(inv_freq, head_dim, theta, factor, original,
                                     scaling.get("beta_fast") or 32.0, scaling.get("beta_slow") or 1.0,
                                     scaling.get("truncate", True))
            # YaRN also sharpens attention a little as the context stretches; mscale and mscale_all_dim, where a
            # config gives both, set that factor as a ratio (transformers' rule)
            m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
            self.scale = scaling.get("attention_factor") or (
                yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if m and m_all else yarn_mscale(factor))
        elif rtype != "default":
            raise ValueError(f"rope_scaling type {rtype!r} is not supported (only YaRN)")
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (B, T) integer positions -> cos, sin (B, 1, T, D), ready to broadcast over heads."""
        freqs = pos[..., None].float() * self.inv_freq  # (B, T, D/2), fp32: positions reach 10^5
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, D)
        return (emb.cos() * self.scale).to(dtype), (emb.sin() * self.scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) by position-dependent angles. x (B, H, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
