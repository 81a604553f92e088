"""Exercise 1 · RMSNorm.  Read notebooks/01_rmsnorm.ipynb first.

Check your work:  pytest exercises/test_rmsnorm.py --impl student
"""
import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x**2 over the last dimension) + eps). No mean subtraction, no bias.

    Qwen3 uses it before attention, before the MLP, after the last layer, and on every head's queries and keys
    (QK-Norm, exercise 3), always with eps = 1e-6.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        """Keep `eps` as self.eps; the gain is self.weight, an nn.Parameter of shape (dim,) starting at ones.
        (The names matter: a checkpoint stores this gain as `...norm.weight`.)"""
        super().__init__()
        raise NotImplementedError("exercise 1: RMSNorm.__init__")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim), any float dtype -> (..., dim), same dtype as x.

        The mean of squares and the normalisation are computed in float32 whatever x's dtype; the normalised
        values are cast back to x's dtype, and only then multiplied by the gain (the order Qwen3's checkpoints
        were trained with: the tests compare bf16 results with transformers' bit for bit).
        """
        raise NotImplementedError("exercise 1: RMSNorm.forward")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# - xf = x.float(); xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
# - then self.weight * that.to(x.dtype)
# - Why float32: in bf16 (8 significant bits) the mean of 4096 squares with an outlier is badly rounded, and in
#   fp16 a square of a few hundred overflows (65,504 is the largest fp16 number).
