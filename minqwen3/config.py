"""Qwen3Config: the official config.json fields as a dataclass, plus the eight released models by name."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).parent / "configs"
PRESETS = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B",
           "Qwen3-30B-A3B", "Qwen3-235B-A22B")

# transformers 5 renamed a few fields; a config.json may carry either spelling.
# Qwen's published sampling settings per mode (thinking mode: greedy decoding is discouraged); the official
# generation_config.json carries the thinking ones
THINKING_DEFAULTS = dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING_DEFAULTS = dict(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)
_ALIASES = {"num_local_experts": "num_experts", "dtype": "torch_dtype"}


# What each config.json field may hold: (check, what the error message asks for). bool is an int in Python, and
# 16.0 or "16" is not a size: both are refused where an integer is meant.
def _int(lo: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _num(lo: float, hi: float = math.inf, lo_open: bool = True):
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and (v > lo if lo_open else v >= lo) and v <= hi)


def _optional(check):
    return lambda v: v is None or check(v)


def _list_of(check):
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _is(*types):
    return lambda v: isinstance(v, types)


_SIZE, _COUNT = (_int(1), "an integer >= 1"), (_int(0), "an integer >= 0")
_RULES = {
    **dict.fromkeys(["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", "num_experts_per_tok", "moe_intermediate_size",
                     "decoder_sparse_step"], _SIZE),
    "head_dim": (lambda v: _int(2)(v) and v % 2 == 0, "an even integer >= 2 (RoPE rotates pairs)"),
    "num_experts": _COUNT,
    "rms_norm_eps": (_num(0), "a number > 0"),
    "rope_theta": (_num(1), "a number > 1"),
    "rope_scaling": (_optional(_is(dict)), "null or an object"),
    **dict.fromkeys(["tie_word_embeddings", "attention_bias", "norm_topk_prob", "use_sliding_window", "use_cache",
                     "output_router_logits"], (_is(bool), "true or false")),
    "hidden_act": (lambda v: v == "silu", "'silu' (Qwen3's activation)"),
    "torch_dtype": (_optional(_is(str)), "a dtype name such as 'bfloat16'"),
    **dict.fromkeys(["bos_token_id", "eos_token_id"], (lambda v: v is None or _int(0)(v) or (
        _list_of(_int(0))(v) and len(v) > 0), "a token id, a list of them or null")),
    "mlp_only_layers": (_list_of(_int(0)), "a list of layer indices"),
    "router_aux_loss_coef": (_num(0, lo_open=False), "a number >= 0"),
    "model_type": (lambda v: v in ("qwen3", "qwen3_moe"), "'qwen3' or 'qwen3_moe'"),
    "architectures": (_optional(_list_of(_is(str))), "a list of class names or null"),
    "attention_dropout": (_num(0, 1, lo_open=False), "a number in 0..1"),
    "initializer_range": (_num(0, lo_open=False), "a number >= 0"),
    **dict.fromkeys(["max_window_layers", "sliding_window"], (_optional(_int(0)), "an integer >= 0 or null")),
}
_ROPE_RULES = {  # rope_scaling entries for YaRN; factor is required, and an entry not listed here is refused
    "factor": (_num(1, lo_open=False), "a number >= 1"),
    "original_max_position_embeddings": _SIZE,
    **dict.fromkeys(["beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"],
                    (_optional(_num(0)), "a number > 0 or null")),
    "truncate": (_is(bool), "true or false"),
    "rope_type": (lambda v: v == "yarn", "'yarn'"), "type": (lambda v: v == "yarn", "'yarn'"),
}


def rope_type(scaling: dict | None) -> str:
    """The kind of a rope_scaling (or rope_parameters) entry: "rope_type", or the older "type", or "default"."""
    scaling = scaling or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


# Where a config.json leaves a field out, transformers' own default holds, not the dataclass's (which describes the
# official models): the fields a checkpoint's tensors cannot show (a wrong size fails their shape check instead)
_FILE_DEFAULTS = {"rope_theta": 10000.0, "max_position_embeddings": 32768}
_FILE_DEFAULTS_MOE = {"norm_topk_prob": False}


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
        for name, value in self.__dict__.items():  # config.json is input: every field checked, no asserts (python -O)
            ok, what = _RULES[name]
            if not ok(value):
                raise ValueError(f"config field {name} = {value!r}: must be {what}")
        rs = self.rope_scaling
        rtype = rope_type(rs)
        if rtype not in ("default", "yarn"):
            raise ValueError(f"config field rope_scaling = {rs!r}: rope_type {rtype!r} is not supported (only yarn)")
        for key, (ok, what) in _ROPE_RULES.items():
            if rtype == "yarn" and (key in rs or key == "factor") and not ok(rs.get(key)):
                raise ValueError(f"config field rope_scaling = {rs!r}: {key} must be {what}")
        unknown = [k for k in (rs or {}) if k not in _ROPE_RULES] if rtype == "yarn" else []
        if unknown:  # a setting minqwen3 would silently ignore changes the positions' angles in transformers
            raise ValueError(f"config field rope_scaling = {rs!r}: {', '.join(unknown)} not supported (YaRN takes "
                             f"{', '.join(k for k in _ROPE_RULES if k != 'type')})")
        if self.use_sliding_window and self.sliding_window is not None and (
                self.num_experts or self.max_window_layers is None or self.max_window_layers < self.num_hidden_layers):
            # transformers gives these layers a banded mask; attending to every position would be silently wrong
            raise ValueError(f"config field use_sliding_window = True: sliding-window attention (sliding_window = "
                             f"{self.sliding_window} from layer max_window_layers = {self.max_window_layers}) is not "
                             "supported; the official Qwen3 models set use_sliding_window to false")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"config field num_attention_heads = {self.num_attention_heads}: must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.num_experts:
            if self.num_experts_per_tok > self.num_experts:
                raise ValueError(f"config field num_experts_per_tok = {self.num_experts_per_tok}: must be in "
                                 f"1..num_experts ({self.num_experts})")
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
        if rope_type(rs) == "yarn":
            return int(rs["factor"] * rs.get("original_max_position_embeddings", self.max_position_embeddings))
        return self.max_position_embeddings

    # ---- reading and writing config.json ----
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Qwen3Config":
        d = {_ALIASES.get(k, k): v for k, v in d.items()}
        # transformers 5 folds rope_theta and rope_scaling into rope_parameters
        rp = d.pop("rope_parameters", None)
        if rp is not None and not isinstance(rp, dict):
            raise ValueError(f"config field rope_parameters = {rp!r}: must be an object")
        if rp:
            rp = dict(rp)
            if "rope_theta" in rp:  # the nested value wins, as in transformers 5
                d["rope_theta"] = rp.pop("rope_theta")
            if rope_type(rp) != "default" and not d.get("rope_scaling"):
                d["rope_scaling"] = rp  # over a "rope_scaling": null beside it, as the official configs have
        layer_types = d.pop("layer_types", None)  # transformers 5: one attention kind per layer
        if layer_types is not None and (not isinstance(layer_types, list)
                                        or any(t != "full_attention" for t in layer_types)):
            raise ValueError(f"config field layer_types = {layer_types!r}: only full_attention layers are supported "
                             "(sliding-window attention is not)")
        moe = d.get("model_type") == "qwen3_moe" or bool(d.get("num_experts"))
        for k, v in {**_FILE_DEFAULTS, **(_FILE_DEFAULTS_MOE if moe else {})}.items():
            d.setdefault(k, v)
        if d.get("use_sliding_window") is True:  # transformers' window where the file names none (then refused)
            d.setdefault("sliding_window", 4096)
            if not moe:
                d.setdefault("max_window_layers", 28)
        if moe and "head_dim" not in d and isinstance(d.get("hidden_size"), int) and isinstance(
                d.get("num_attention_heads"), int) and d["num_attention_heads"] > 0:
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]  # transformers' Qwen3-MoE without it
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
        except (ValueError, TypeError) as e:
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
        if d["max_window_layers"] is None:  # transformers 5 wants an integer: no layer from which a window starts
            d["max_window_layers"] = self.num_hidden_layers
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
