"""Plausible wrong solutions of every exercise, for test_mutants.py: each must fail its exercise's tests.

A mutant is a module with the exercise's names, built from the reference (minqwen3) with one mistake a student is
likely to make, or, for the model, checkpoint and sampling exercises, from a compact correct solution written here
with a switch for each mistake (so the mutants do not depend on the package's internals).
"""
from __future__ import annotations

import inspect
import itertools
import json
import re
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import minqwen3.assistant as ref_assistant
import minqwen3.chat_template as ref_chat
import minqwen3.moe as ref_moe
import minqwen3.rmsnorm as ref_rmsnorm
import minqwen3.rope as ref_rope
from minqwen3.mlp import MLP
from minqwen3.moe import SparseMoE
from minqwen3.rmsnorm import RMSNorm
from minqwen3.rope import RotaryEmbedding, apply_rope


def variant(ref: types.ModuleType, **replace) -> types.ModuleType:
    """A copy of module `ref` with some names replaced. Its own functions and classes are re-bound to the copy, so
    they call the replacements (a replaced helper changes every function that uses it)."""
    fake = types.ModuleType(f"{ref.__name__}_mutant")
    ns = fake.__dict__
    ns.update({k: v for k, v in vars(ref).items() if not k.startswith("__")})

    def own(f):
        return isinstance(f, types.FunctionType) and f.__code__.co_filename == ref.__file__

    def rebind(f):
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        g.__kwdefaults__, g.__qualname__ = f.__kwdefaults__, f.__qualname__
        return g

    for k, v in list(ns.items()):
        if k in replace:
            continue
        if own(v):
            ns[k] = rebind(v)
        elif isinstance(v, type) and v.__module__ == ref.__name__:
            attrs = {a: rebind(m) for a, m in vars(v).items() if own(m)}
            attrs.update({a: staticmethod(rebind(m.__func__)) for a, m in vars(v).items()
                          if isinstance(m, staticmethod) and own(m.__func__)})
            ns[k] = type(k, (v,), attrs)
    ns.update(replace)
    return fake


# ---------------------------------------------------------------- 1 rmsnorm
def _norm(forward=None, init=None):
    attrs = {}
    if forward:
        attrs["forward"] = forward
    if init:
        attrs["__init__"] = init
    return variant(ref_rmsnorm, RMSNorm=type("RMSNorm", (ref_rmsnorm.RMSNorm,), attrs))


def _gain_random(self, dim, eps=1e-6):
    ref_rmsnorm.RMSNorm.__init__(self, dim, eps)
    self.weight = nn.Parameter(torch.randn(dim))


RMSNORM = {
    "statistics in the input dtype": _norm(lambda self, x: self.weight * (
        x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))),
    "gain applied before the cast back": _norm(lambda self, x: (self.weight.float() * (
        x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)),
    "mean subtracted (LayerNorm)": _norm(lambda self, x: ref_rmsnorm.RMSNorm.forward(
        self, x - x.mean(-1, keepdim=True))),
    "eps outside the square root": _norm(lambda self, x: self.weight * (
        x.float() / (x.float().pow(2).mean(-1, keepdim=True).sqrt() + self.eps)).to(x.dtype)),
    "eps ignored (always 1e-6)": _norm(lambda self, x: self.weight * (
        x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)),
    "gain not initialised to ones": _norm(init=_gain_random),
}


# ---------------------------------------------------------------- 2 rope
class _LowPrecisionAngles(ref_rope.RotaryEmbedding):
    def forward(self, pos, dtype):
        freqs = pos[..., None].to(dtype) * self.inv_freq.to(dtype)  # angles in bf16/fp16: wrong at large positions
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        return (emb.cos() * self.scale).to(dtype), (emb.sin() * self.scale).to(dtype)


class _NoYarnScale(ref_rope.RotaryEmbedding):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.scale = 1.0


class _HalfExponent(ref_rope.RotaryEmbedding):
    def __init__(self, head_dim, theta, scaling=None, max_position=40960):
        super().__init__(head_dim, theta, scaling, max_position)
        if scaling is None:  # theta ** (i / D) instead of theta ** (2i / D)
            self.inv_freq = 1.0 / theta ** (torch.arange(head_dim // 2, dtype=torch.float32) / head_dim)


def _interleaved(x, cos, sin):  # pairs (2i, 2i+1), the paper's layout, not the checkpoints'
    c, s = cos[..., : x.shape[-1] // 2], sin[..., : x.shape[-1] // 2]
    a, b = x[..., ::2], x[..., 1::2]
    return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)


def _yarn_reversed(inv_freq, head_dim, base, factor, original_max, *a, **kw):
    y = ref_rope.yarn_inv_freq(inv_freq, head_dim, base, factor, original_max, *a, **kw)
    return inv_freq + inv_freq / factor - y  # the ramp the wrong way round: slow pairs kept, fast ones divided


def _yarn_untruncated(inv_freq, head_dim, base, factor, original_max, beta_fast=32.0, beta_slow=1.0, truncate=True):
    return ref_rope.yarn_inv_freq(inv_freq, head_dim, base, factor, original_max, beta_fast, beta_slow, False)


class _NoAttentionFactor(ref_rope.RotaryEmbedding):
    def __init__(self, head_dim, theta, scaling=None, max_position=40960):
        scaling = {k: v for k, v in (scaling or {}).items() if k != "attention_factor"} or scaling
        super().__init__(head_dim, theta, scaling, max_position)


class _RopeTypeOnly(ref_rope.RotaryEmbedding):
    def __init__(self, head_dim, theta, scaling=None, max_position=40960):
        if scaling and "rope_type" not in scaling:  # the legacy "type" key not read: plain RoPE
            scaling = None
        super().__init__(head_dim, theta, scaling, max_position)


ROPE = {
    "YaRN attention_factor ignored": variant(ref_rope, RotaryEmbedding=_NoAttentionFactor),
    "legacy 'type' key not read": variant(ref_rope, RotaryEmbedding=_RopeTypeOnly),
    "angles in the model's dtype": variant(ref_rope, RotaryEmbedding=_LowPrecisionAngles),
    "pairs (2i, 2i+1) instead of rotate-half": variant(ref_rope, apply_rope=_interleaved),
    "rotate-half with the sign flipped": variant(ref_rope, apply_rope=lambda x, cos, sin: x * cos + torch.cat(
        [x[..., x.shape[-1] // 2:], -x[..., : x.shape[-1] // 2]], -1) * sin),
    "frequencies theta^(i/D) instead of theta^(2i/D)": variant(ref_rope, RotaryEmbedding=_HalfExponent),
    "YaRN ramp reversed": variant(ref_rope, yarn_inv_freq=_yarn_reversed),
    "YaRN bounds not rounded (truncate ignored)": variant(ref_rope, yarn_inv_freq=_yarn_untruncated),
    "YaRN attention scale left out": variant(ref_rope, RotaryEmbedding=_NoYarnScale),
}


# ---------------------------------------------------------------- 4 moe
def _moe_forward(renormalise):  # renormalise: "never", "always"
    def forward(self, x):
        B, T, H = x.shape
        x = x.reshape(B * T, H)
        logits = self.gate(x)
        w, idx = logits.softmax(-1, dtype=torch.float).topk(self.top_k, dim=-1)
        if renormalise == "always":
            w = w / w.sum(-1, keepdim=True)
        return self.experts(x, idx, w.to(x.dtype)).view(B, T, H), logits
    return forward


class _SortNotUndone(ref_moe.Experts):
    def _sorted(self, x, flat, k):
        return ref_moe.Experts._sorted(self, x, flat, k)[flat.argsort(stable=True)]  # left in expert order


class _BlockEndsOffByOne(ref_moe.Experts):
    def _sorted(self, x, flat, k):
        E = self.gate_proj.shape[0]
        order = flat.argsort(stable=True)
        xs = x[order // k]
        ends = torch.searchsorted(flat[order], torch.arange(E), right=False)  # block starts taken for ends
        ys, start = torch.zeros_like(xs), 0
        for e, end in enumerate(ends.tolist()):
            if end > start:
                xe = xs[start:end]
                ys[start:end] = (F.silu(xe @ self.gate_proj[e].T) * (xe @ self.up_proj[e].T)) @ self.down_proj[e].T
                start = end
        return torch.empty_like(ys).index_copy_(0, order, ys)


class _GatherOnly(ref_moe.Experts):
    def forward(self, x, idx, w):
        N, k = idx.shape
        flat = idx.reshape(-1)
        xr = x.repeat_interleave(k, dim=0)[:, :, None]
        h = F.silu(torch.bmm(self.gate_proj[flat], xr)) * torch.bmm(self.up_proj[flat], xr)
        return (torch.bmm(self.down_proj[flat], h)[..., 0].view(N, k, -1) * w[..., None]).sum(1)

    def _sorted(self, x, flat, k):
        raise NotImplementedError("never written: the gather path passed every test")


def _loss_unmasked_p(router_logits, top_k, mask=None, counts=None):
    total = 0.0
    for layer, logits in enumerate(router_logits):
        E = logits.shape[-1]
        P = logits.float().softmax(-1).mean(0)  # the padding tokens' probabilities included
        c = ref_moe.expert_counts(logits, top_k, mask) if counts is None else counts[layer].float()
        total = total + E * (c / c.sum() * P).sum()
    return total / len(router_logits)


MOE = {
    "top-k weights not renormalised": variant(ref_moe, SparseMoE=type(
        "SparseMoE", (ref_moe.SparseMoE,), {"forward": _moe_forward("never")})),
    "top-k weights always renormalised": variant(ref_moe, SparseMoE=type(
        "SparseMoE", (ref_moe.SparseMoE,), {"forward": _moe_forward("always")})),
    "sorted dispatch: the sort not undone": variant(ref_moe, Experts=_SortNotUndone),
    "sorted dispatch: block ends off by one expert": variant(ref_moe, Experts=_BlockEndsOffByOne),
    "only the gather path written": variant(ref_moe, Experts=_GatherOnly),
    "loss: f counted per token (sums to k)": variant(ref_moe, load_balancing_loss=lambda lg, k, mask=None, counts=None:
                                                     k * ref_moe.load_balancing_loss(lg, k, mask, counts)),
    "loss: padding tokens in P": variant(ref_moe, load_balancing_loss=_loss_unmasked_p),
    "loss: global counts ignored": variant(ref_moe, load_balancing_loss=lambda lg, k, mask=None, counts=None:
                                           ref_moe.load_balancing_loss(lg, k, mask)),
    "expert_counts ignores the mask": variant(ref_moe, expert_counts=lambda logits, k, mask=None:
                                              ref_moe.expert_counts(logits, k)),
    "loss: global counts summed over the layers": variant(
        ref_moe, load_balancing_loss=lambda lg, k, mask=None, counts=None: ref_moe.load_balancing_loss(
            lg, k, mask, None if counts is None else counts.sum(0, keepdim=True).expand_as(counts))),
}


# ---------------------------------------------------------------- 6 chat template
class _AsciiJson:
    @staticmethod
    def dumps(x, **kw):
        return json.dumps(x, **{**kw, "ensure_ascii": True})


def _last_user(messages):
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)


def _keeps_stop(text):
    reasoning, content = ref_chat.parse_reply(text)
    return reasoning, content + ("<|im_end|>" if text.endswith("<|im_end|>") else "")


def _first_close(text):  # the answer taken from the first </think> on, not the last
    reasoning, content = ref_chat.parse_reply(text)
    if "</think>" in text:
        content = text.split("</think>", 1)[1].lstrip("\n").removesuffix("<|im_end|>").removesuffix("<|endoftext|>")
    return reasoning, content


def _starts_only(messages):  # a user message starting with <tool_response> taken for a tool result
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"
             and not str(m.get("content", "")).startswith("<tool_response>")]
    return max(users, default=len(messages) - 1)


CHAT_TEMPLATE = {
    "enable_thinking=None turns thinking off": variant(
        ref_chat, apply_chat_template=lambda messages, tools=None, add_generation_prompt=False, enable_thinking=True:
        ref_chat.apply_chat_template(messages, tools, add_generation_prompt, bool(enable_thinking))),
    "tool schemas ASCII-escaped": variant(ref_chat, json=_AsciiJson),
    "last query: any user message, tool results included": variant(ref_chat, last_query_index=_last_user),
    "reasoning never dropped from history": variant(ref_chat, last_query_index=lambda messages: -1),
    "parse_reply keeps the stop token": variant(ref_chat, parse_reply=_keeps_stop),
    "parse_reply: content after the first </think>": variant(ref_chat, parse_reply=_first_close),
    "last query: a tool response told by its start alone": variant(ref_chat, last_query_index=_starts_only),
}


# ---------------------------------------------------------------- 7b thinking budget (early_stop_ids)
def _newlines_then(count_tail, spelled_out=False):
    """early_stop_ids with the newlines counted by count_tail(tokenizer, before) -> newlines to add; spelled_out:
    encoded with every control token, </think> included, as the characters it spells (the Tokenizer's text-only
    encoder)."""
    def early_stop_ids(tokenizer, before):
        text = "\n" * count_tail(tokenizer, before) + ref_assistant.EARLY_STOP
        if spelled_out:
            return tokenizer._text_only.encode(text, add_special_tokens=False).ids
        return tokenizer.encode(text)
    return early_stop_ids


def _right(tokenizer, before):  # what completes a blank line, from the last two tokens
    tail = tokenizer.decode(list(before[-2:]))
    return max(0, 2 - (len(tail) - len(tail.rstrip("\n"))))


def _last_token_only(tokenizer, before):
    tail = tokenizer.decode(list(before[-1:]))
    return max(0, 2 - (len(tail) - len(tail.rstrip("\n"))))


ASSISTANT = {
    "no blank line before the sentence": variant(ref_assistant, early_stop_ids=_newlines_then(lambda t, b: 0)),
    "blank line always added (two after a blank line)":
        variant(ref_assistant, early_stop_ids=_newlines_then(lambda t, b: 2)),
    "a thought ending in one newline gets two more": variant(
        ref_assistant, early_stop_ids=_newlines_then(lambda t, b: 0 if t.decode(list(b[-2:])).endswith("\n\n")
                                                      else 2)),
    "only the last token looked at": variant(ref_assistant, early_stop_ids=_newlines_then(_last_token_only)),
    "</think> encoded as text": variant(ref_assistant, early_stop_ids=_newlines_then(_right, spelled_out=True)),
    "the '.' after </think> left out": variant(
        ref_assistant, EARLY_STOP=ref_assistant.EARLY_STOP.replace("</think>.", "</think>")),
}


# ---------------------------------------------------------------- 7 sampling (a compact solution with switches)
def sampling_module(bug: str | None = None) -> types.ModuleType:
    def sample(logits, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, presence_penalty=0.0, seen=None,
               generator=None):
        logits = logits.float()
        penalise = presence_penalty and seen is not None
        if penalise and bug == "penalty after the temperature" and temperature > 0:
            logits, presence_penalty = logits / temperature - presence_penalty * seen, 0.0
            temperature = 1.0
        if penalise and bug != "penalty only when sampling":
            if bug == "penalty multiplies (repetition-penalty style)":
                logits = torch.where(seen > 0, torch.where(logits > 0, logits / (1 + presence_penalty),
                                                           logits * (1 + presence_penalty)), logits)
            else:
                logits = logits - presence_penalty * seen
        if temperature <= 0:
            return logits.argmax(-1)
        if penalise and bug == "penalty only when sampling":
            logits = logits - presence_penalty * seen
        probs = (logits / (1.0 if bug == "temperature after the filters" else temperature)).softmax(-1)
        full = probs
        if top_k and top_k < probs.shape[-1]:
            probs = probs * (probs >= probs.topk(top_k, dim=-1).values[:, -1:])
            probs = probs / probs.sum(-1, keepdim=True)
        if min_p > 0.0 and bug == "min-p before top-p":
            probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
            probs, min_p = probs / probs.sum(-1, keepdim=True), 0.0
        if top_p < 1.0:
            basis = full if bug == "top-p on the distribution before top-k" else probs
            sp, order = basis.sort(-1, descending=True)
            if bug == "top-p without sorting":  # the cumulative sum in vocabulary order
                sp, order = basis, torch.arange(basis.shape[-1]).expand_as(basis)
            before = sp.cumsum(-1) - (0 if bug == "top-p drops the token that crosses it" else sp)
            drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before >= top_p)
            probs = probs.masked_fill(drop, 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        if min_p > 0.0:
            limit = (min_p if bug == "min-p as an absolute threshold" else
                     min_p * probs.max() if bug == "min-p against the batch's largest" else
                     min_p * probs.amax(-1, keepdim=True))
            probs = probs.masked_fill(probs < limit, 0.0)
        if bug == "temperature after the filters":
            probs = (probs.clamp(min=1e-30).log() / temperature).softmax(-1) * (probs > 0)
        probs = probs / probs.sum(-1, keepdim=True)
        gen = None if bug == "generator ignored" else generator
        return torch.multinomial(probs, 1, generator=gen)[:, 0]
    return types.SimpleNamespace(sample=sample)


SAMPLING_BUGS = ["penalty only when sampling", "penalty multiplies (repetition-penalty style)",
                 "temperature after the filters", "top-p on the distribution before top-k",
                 "top-p drops the token that crosses it", "min-p as an absolute threshold", "generator ignored",
                 "penalty after the temperature", "top-p without sorting", "min-p before top-p",
                 "min-p against the batch's largest"]


# ---------------------------------------------------------------- 5 model (a compact solution with switches)
def model_module(bug: str | None = None) -> types.ModuleType:
    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
            self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
            self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
            self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
            self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
            self.q_norm, self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps), RMSNorm(c.head_dim, c.rms_norm_eps)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
            k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv, self.head_dim)).transpose(1, 2)
            v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q = apply_rope(q, cos, sin)
            k = k if bug == "RoPE on the queries only" else apply_rope(k, cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=bug != "attention not causal", enable_gqa=True)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    class DecoderLayer(nn.Module):
        def __init__(self, c, i):
            super().__init__()
            self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
            self.self_attn = Attention(c)
            self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
            moe = c.num_experts > 0 if bug == "every layer MoE (mlp_only_layers ignored)" else c.is_moe_layer(i)
            self.mlp = SparseMoE(c) if moe else MLP(c.hidden_size, c.intermediate_size)

        def forward(self, x, cos, sin):
            if bug == "post-norm instead of pre-norm":
                x = self.input_layernorm(x + self.self_attn(x, cos, sin))
                y = self.mlp(x)
                return self.post_attention_layernorm(x + (y[0] if isinstance(y, tuple) else y))
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            y = self.mlp(self.post_attention_layernorm(x))
            y = y[0] if isinstance(y, tuple) else y
            return y if bug == "no residual around the MLP" else x + y

    class Qwen3Model(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
            self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_hidden_layers))
            self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
            self.rotary_emb = RotaryEmbedding(c.head_dim, c.rope_theta,
                                              None if bug == "rope_scaling not passed on" else c.rope_scaling,
                                              c.max_position_embeddings)

    class Qwen3(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.config = c
            self.model = Qwen3Model(c)
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
            if c.tie_word_embeddings and bug != "head a copy of the embedding, not tied":
                self.lm_head.weight = self.model.embed_tokens.weight

        def forward(self, input_ids):
            x = self.model.embed_tokens(input_ids)
            pos = torch.arange(input_ids.shape[1])[None]
            cos, sin = self.model.rotary_emb(pos, x.dtype)
            for layer in self.model.layers:
                x = layer(x, cos, sin)
            return self.lm_head(x if bug == "final norm left out" else self.model.norm(x)).float()

    return types.SimpleNamespace(DecoderLayer=DecoderLayer, Qwen3Model=Qwen3Model, Qwen3=Qwen3)


MODEL_BUGS = ["rope_scaling not passed on", "attention not causal", "every layer MoE (mlp_only_layers ignored)",
              "post-norm instead of pre-norm", "no residual around the MLP", "head a copy of the embedding, not tied", "RoPE on the queries only",
              "final norm left out"]


# ---------------------------------------------------------------- 5b checkpoint (a compact solution with switches)
_EXPERT = re.compile(r"(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def checkpoint_module(bug: str | None = None) -> types.ModuleType:
    def expected(model):
        out = {}
        for name, p in model.named_parameters():
            m = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_proj|up_proj|down_proj)", name)
            if m:
                for j in range(p.shape[0]):
                    out[f"{m[1]}.{j}.{m[2]}.weight"] = (name, j)
            else:
                out[name] = (name, None)
        if bug == "state dict keeps the tied head" and model.config.tie_word_embeddings:
            out["lm_head.weight"] = ("lm_head.weight", None)
        return out

    def state_dict_official(model):
        params = dict(model.named_parameters(remove_duplicate=False))
        return {k: params[n] if j is None else params[n][j] for k, (n, j) in expected(model).items()}

    def load_weights(model, path, device=None, dtype=None, strict=True):
        path = Path(path)
        index = path / "model.safetensors.index.json"
        single_first = (path / "model.safetensors").is_file() and bug != "index read before model.safetensors"
        if index.is_file() and not single_first and bug != "shard index ignored":
            files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        else:
            files = ["model.safetensors"]
        tensors = {}
        for f in files:
            tensors.update(load_file(path / f))
        want = expected(model)
        tied = model.config.tie_word_embeddings
        if (tied and "lm_head.weight" in tensors and bug != "a stored head never compared"
                and not torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])):
            raise ValueError("lm_head.weight differs from model.embed_tokens.weight in a tied checkpoint")
        if bug == "experts stacked in the keys' string order":
            keys = sorted(k for k in tensors if _EXPERT.fullmatch(k))
            rows = {}
            for k in keys:
                m = _EXPERT.fullmatch(k)
                rows.setdefault(f"{m[1]}.{m[3]}", []).append(k)
            for name, ks in rows.items():
                for j, k in enumerate(ks):
                    want[k] = (name, j)
        extra = [k for k in tensors if k not in want and not (tied and k == "lm_head.weight"
                                                              and bug != "tied model refuses a stored head")]
        missing = [k for k in want if k not in tensors]
        if strict and (extra or missing) and bug != "never strict":
            raise ValueError(f"missing {missing}, unexpected {extra}")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, t in tensors.items():
                if k not in want:
                    continue
                name, j = want[k]
                p = params[name]
                target = p if j is None else p[j]
                if target.shape != t.shape:
                    if bug == "shape never checked":
                        continue
                    raise ValueError(f"{k}: shape {list(t.shape)}, expected {list(target.shape)}")
                target.copy_(t)
        if dtype is not None and bug != "dtype ignored":
            model.to(dtype)
        return model.to(device or "cpu")

    return types.SimpleNamespace(state_dict_official=state_dict_official, load_weights=load_weights)


CHECKPOINT_BUGS = ["experts stacked in the keys' string order", "never strict", "tied model refuses a stored head",
                   "state dict keeps the tied head", "shard index ignored", "shape never checked", "dtype ignored",
                   "index read before model.safetensors", "a stored head never compared"]

MUTANTS = {  # exercise test file -> {mistake: module}
    "test_rmsnorm.py": RMSNORM,
    "test_rope.py": ROPE,
    "test_moe.py": MOE,
    "test_chat_template.py": CHAT_TEMPLATE,
    "test_sampling.py": {b: sampling_module(b) for b in SAMPLING_BUGS},
    "test_assistant.py": ASSISTANT,
    "test_model.py": {b: model_module(b) for b in MODEL_BUGS},
    "test_checkpoint.py": {b: checkpoint_module(b) for b in CHECKPOINT_BUGS},
}
CORRECT = {"test_sampling.py": sampling_module(), "test_model.py": model_module(),
           "test_checkpoint.py": checkpoint_module()}  # the switches off: these must pass


# ---------------------------------------------------------------- the harness of test_mutants_<exercise>.py
# The later exercises (8 on) keep their wrong answers beside a plain correct solution in test_mutants_<name>.py,
# built as `solution(wrong)`, and take their two tests from here.
def cases(test) -> list[dict]:
    """Every parameter set of a (maybe parametrized) test function, as keyword dictionaries."""
    axes = []
    for mark in getattr(test, "pytestmark", []):
        if mark.name == "parametrize":
            names = [n.strip() for n in mark.args[0].split(",")]
            axes.append([dict(zip(names, v if len(names) > 1 else (v,))) for v in mark.args[1]])
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*axes)]


def failing(test_module: types.ModuleType, impl) -> set[str]:
    """The names of test_module's tests that fail on `impl`, each run with all its parameter sets."""
    out = set()
    for name, test in inspect.getmembers(test_module, inspect.isfunction):
        if name.startswith("test_"):
            for kw in cases(test):
                try:
                    test(impl, **kw)
                except (Exception, pytest.fail.Exception):  # any failure counts as caught (pytest.raises that sees
                    out.add(name)  # no error raises pytest's Failed, which is not an Exception)
                    break
    return out


def mutation_tests(test_module: types.ModuleType, solution, mutants: dict[str, str]):
    """The two tests of a test_mutants_<exercise>.py: the correct `solution()` passes every test of test_module, and
    each `solution(wrong)` fails the test that `mutants[wrong]` names (others may fail too)."""
    def test_a_correct_answer_passes():
        assert failing(test_module, solution()) == set()

    @pytest.mark.parametrize("wrong", mutants)
    def test_each_wrong_answer_is_caught(wrong):
        caught = failing(test_module, solution(wrong))
        assert mutants[wrong] in caught, f"{wrong!r} got past {mutants[wrong]} (caught by: {sorted(caught)})"

    return test_a_correct_answer_passes, test_each_wrong_answer_is_caught


@pytest.fixture(autouse=True)
def reference_only(request):
    """Mutation tests check the exercises' tests: with --impl student they have nothing to say."""
    if request.config.getoption("--impl") == "student":
        pytest.skip("mutation tests check the exercises' tests, not your code")
