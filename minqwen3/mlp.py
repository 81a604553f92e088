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

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """norm: the layer's RMSNorm, applied to x first (in the decode step on a GPU: on the way into gate|up)."""
        w = stack.stacked(self)  # gate|up as one weight, inside a Decoder's step (stack.py), else None
        if w is None:
            x = x if norm is None else norm(x)
            g, u = self.gate_proj(x), self.up_proj(x)
        else:  # decoding on a GPU: one kernel norms x and projects (matvec.py)
            g, u = matvec.normed_linear(x, w, norm).chunk(2, -1)
        # on a GPU the product is a kernel of its own, computed once (swiglu.py says why); in a compiled prompt
        # (B, T > 1, C) Inductor fuses it with what is around it, where the opaque op's Python cost the host ~0.2 ms
        # a layer for microseconds of GPU work
        compiled_prompt = torch.compiler.is_compiling() and x.dim() == 3 and x.shape[1] > 1
        h = swiglu.swiglu(g, u) if not compiled_prompt and swiglu.available(g) else F.silu(g) * u
        return matvec.linear(self.down_proj, h)  # decoding on a GPU: matvec.py's kernel
