"""Qwen3Config: the official config.json fields as a dataclass, plus the eight released models by name."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent / "configs"
PRESETS = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B",
           "Qwen3-30B-A3B", "Qwen3-235B-A22B")

# transformers 5 renamed a few fields; a config.json may carry either spelling.
_ALIASES = {"num_local_experts": "num_experts", "dtype": "torch_dtype"}


@dataclass
class Qwen3Config:
    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128  # not hidden_size // num_attention_heads: Qwen3 sets it explicitly
    max_position_embeddings: int = 40960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None  # e.g. {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    hidden_act: str = "silu"
    torch_dtype: str = "bfloat16"
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    # MoE (model_type "qwen3_moe"); num_experts == 0 means dense everywhere
    num_experts: int = 0
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    router_aux_loss_coef: float = 0.001
    # carried through so a saved config.json keeps the official fields; minqwen3 does not use them
    model_type: str = "qwen3"
    architectures: list[str] | None = None
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    max_window_layers: int | None = None
    sliding_window: int | None = None
    use_sliding_window: bool = False
    use_cache: bool = True
    output_router_logits: bool = False

    def __post_init__(self):
        assert self.num_attention_heads % self.num_key_value_heads == 0, (
            f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({self.num_key_value_heads})")
        assert self.hidden_act == "silu", f"hidden_act {self.hidden_act!r}: Qwen3 uses 'silu'"
        if self.num_experts:
            assert 0 < self.num_experts_per_tok <= self.num_experts, (
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..num_experts ({self.num_experts})")
            self.model_type = "qwen3_moe"
        if self.architectures is None:
            self.architectures = ["Qwen3MoeForCausalLM" if self.num_experts else "Qwen3ForCausalLM"]

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        """Layer i uses the sparse MoE block (else the dense SwiGLU MLP), as transformers decides it."""
        return (self.num_experts > 0 and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)

    @property
    def context_length(self) -> int:
        rs = self.rope_scaling or {}
        if rs.get("rope_type", rs.get("type")) == "yarn":
            return int(rs["factor"] * rs.get("original_max_position_embeddings", self.max_position_embeddings))
        return self.max_position_embeddings

    # ---- reading and writing config.json ----
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Qwen3Config":
        d = {_ALIASES.get(k, k): v for k, v in d.items()}
        # transformers 5 folds rope_theta and rope_scaling into rope_parameters
        rp = d.pop("rope_parameters", None)
        if rp:
            rp = dict(rp)
            d.setdefault("rope_theta", rp.pop("rope_theta", cls.rope_theta))
            if rp.get("rope_type", "default") != "default":
                d.setdefault("rope_scaling", rp)
        if d.get("model_type") == "qwen3_moe":
            d.setdefault("num_experts", 128)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Qwen3Config":
        """Read a checkpoint folder's config.json (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json at {file}: a checkpoint folder holds config.json, "
                                    "tokenizer.json and model*.safetensors")
        try:
            d = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(d).__name__}")
        if d.get("model_type", "qwen3") not in ("qwen3", "qwen3_moe"):
            raise ValueError(f"{file}: model_type {d['model_type']!r} is not a Qwen3 model (qwen3 or qwen3_moe)")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in d]
        if missing:
            raise ValueError(f"{file} lacks required field(s) {', '.join(missing)}")
        try:
            return cls.from_dict(d)
        except (AssertionError, TypeError) as e:
            raise ValueError(f"{file}: {e}") from None

    @classmethod
    def from_name(cls, name: str) -> "Qwen3Config":
        """One of the eight official models, e.g. "Qwen3-8B" or "Qwen/Qwen3-30B-A3B"."""
        short = name.removeprefix("Qwen/")
        if short not in PRESETS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
        return cls.from_pretrained(PRESETS_DIR / f"{short}.json")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.is_moe:  # a dense config.json carries no MoE fields
            for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                      "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "output_router_logits"):
                d.pop(k)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def count_params(config: Qwen3Config) -> tuple[int, int]:
    """(total, active) parameter counts; active counts only the top-k experts of each MoE layer."""
    c = config
    H, D = c.hidden_size, c.head_dim
    attn = H * D * (2 * c.num_attention_heads + 2 * c.num_key_value_heads) + 2 * D  # q,k,v,o + q_norm,k_norm
    if c.attention_bias:
        attn += D * (c.num_attention_heads + 2 * c.num_key_value_heads) + H
    dense_mlp = 3 * H * c.intermediate_size
    expert = 3 * H * c.moe_intermediate_size
    total = active = 0
    for i in range(c.num_hidden_layers):
        base = attn + 2 * H  # + the two RMSNorms
        if c.is_moe_layer(i):
            total += base + H * c.num_experts + c.num_experts * expert
            active += base + H * c.num_experts + c.num_experts_per_tok * expert
        else:
            total += base + dense_mlp
            active += base + dense_mlp
    emb = c.vocab_size * H * (1 if c.tie_word_embeddings else 2) + H  # embeddings, lm_head, final norm
    return total + emb, active + emb
