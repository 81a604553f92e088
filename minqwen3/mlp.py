"""SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""
import torch
import torch.nn.functional as F
from torch import nn

from . import matvec, stack, swiglu


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm: the layer's RMSNorm, applied to x first (in the decode step on a GPU: on the way into gate|up).
        residual: returns residual + the output (decoding on a GPU: added in down_proj's kernel)."""
        w = stack.stacked(self)  # gate|up as one weight, inside a Decoder's step (stack.py), else None
        if w is None:
            x = x if norm is None else norm(x)
            g, u = self.gate_proj(x), self.up_proj(x)
        else:  # decoding on a GPU: one kernel norms x and projects (matvec.py)
            gu = matvec.normed_linear(x, w, norm)  # (B, T, 2 I): gate | up
            # and one more takes silu(gate) * up on its way into down_proj (and adds the residual); not on a split
            # layer, whose wide input costs each narrow program its own silu (Qwen3-32B on two GPUs: +0.43 ms a step)
            if (not getattr(self.down_proj, "split_input", False)
                    and matvec.available(gu, self.down_proj.weight, one_row=True, gated=True, residual=residual)):
                return matvec.matvec(gu, self.down_proj.weight, residual=residual, gated=True)
            g, u = gu.chunk(2, -1)
        # on a GPU the product is a kernel of its own, computed once (swiglu.py says why)
        h = swiglu.swiglu(g, u) if swiglu.available(g) else F.silu(g) * u
        # decoding on a GPU: matvec.py's kernel (at one row where the Decoder reads the stacks: matvec.fused)
        return matvec.linear(self.down_proj, h, residual, one_row=w is not None)
