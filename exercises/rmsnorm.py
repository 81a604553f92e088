"""Exercise 1 · RMSNorm.  Read notebooks/01_rmsnorm.ipynb, then fill in the TODOs.

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
        """TODO: keep `eps` as self.eps; create the gain self.weight, an nn.Parameter of `dim` ones.
        (The names matter: a checkpoint stores this gain as `...norm.weight`.)"""
        super().__init__()
        raise NotImplementedError("exercise 1: RMSNorm.__init__")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> same shape and dtype as x.

        TODO:
        1. compute the statistics in float32, whatever x's dtype (in bf16 a mean of 4096 squares loses too much);
        2. multiply x (in float32) by torch.rsqrt(mean of squares + eps);
        3. cast back to x.dtype FIRST, then multiply by self.weight: this is the order the checkpoints were
           trained with, and the test compares bf16 results bit for bit.
        """
        raise NotImplementedError("exercise 1: RMSNorm.forward")
