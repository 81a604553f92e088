"""Exercise 2 · RoPE and YaRN, against transformers' Qwen3RotaryEmbedding, apply_rotary_pos_emb and YaRN code."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

QWEN3_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}  # 32,768 -> 131,072
SCALINGS = {
    "plain": None,
    "qwen3_yarn": QWEN3_YARN,
    "yarn_untruncated": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096,
                         "beta_fast": 16, "truncate": False},
}
POS = torch.tensor([[0, 1, 7, 1000, 32767, 40000, 131071]])


def assert_tables_close(got, want, what):
    """cos or sin (B, T, D) against transformers' at POS. A frequency one float32 ulp (1.2e-7 relative) away from
    transformers', as theta ** (-2i/D) or a float64 computation gives, moves the angle at position p by up to
    1.2e-7 p: 0.016 at 131,071. That is allowed (with YaRN's scale on top); the wrong answers the tests are after
    (no scale, bounds not rounded, the ramp reversed, ...) are off by 0.069 or more there."""
    tol = 1e-6 + 1.5e-7 * POS[0, :, None].float()  # (T, 1)
    err = (got - want).abs().amax(0)  # (T, D)
    bad = (err > tol).any(-1)
    assert not bad.any(), (f"{what} differs from transformers' at positions {POS[0, bad].tolist()}: "
                           f"largest differences {err.amax(-1)[bad].tolist()}, allowed {tol[bad, 0].tolist()}")


def hf_config(scaling, head_dim=128, theta=1e6):
    return transformers.Qwen3Config(head_dim=head_dim, rope_theta=theta, max_position_embeddings=40960,
                                    **({"rope_scaling": dict(scaling)} if scaling else {}))


@pytest.mark.parametrize("name", SCALINGS)
def test_cos_sin_match_transformers(impl, name):
    scaling = SCALINGS[name]
    ours = impl.RotaryEmbedding(128, 1e6, scaling, 40960)
    cos, sin = ours(POS, torch.float32)
    assert cos.shape == sin.shape == (1, 1, POS.shape[1], 128), "cos, sin: (B, 1, T, head_dim)"
    hf = Qwen3RotaryEmbedding(hf_config(scaling))
    torch.testing.assert_close(ours.inv_freq, hf.inv_freq, rtol=1e-6, atol=0, msg="inv_freq (head_dim/2,)")
    want_cos, want_sin = hf(torch.zeros(1), POS)  # (B, T, D)
    assert_tables_close(cos[:, 0], want_cos, "cos")
    assert_tables_close(sin[:, 0], want_sin, "sin")


def test_cos_sin_dtype(impl):
    cos, sin = impl.RotaryEmbedding(64, 1e6)(torch.arange(5)[None], torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["qwen3_yarn", "yarn_untruncated"])
def test_yarn_inv_freq_and_attention_factor(impl, name):
    s = SCALINGS[name]
    want, factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config(s))
    plain = 1.0 / 1e6 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128)
    got = impl.yarn_inv_freq(plain, 128, 1e6, s["factor"], s["original_max_position_embeddings"],
                             s.get("beta_fast", 32.0), s.get("beta_slow", 1.0), s.get("truncate", True))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert impl.RotaryEmbedding(128, 1e6, s).scale == pytest.approx(factor)
    if name == "qwen3_yarn":
        assert factor == pytest.approx(0.1 * math.log(4) + 1)


def test_unknown_scaling_is_refused(impl):
    with pytest.raises(ValueError):
        impl.RotaryEmbedding(128, 1e6, {"rope_type": "linear", "factor": 2.0})


def test_apply_rope_matches_transformers(impl):
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 9, 64), torch.randn(2, 2, 9, 64)
    pos = torch.arange(3, 12)[None].expand(2, 9)
    cos, sin = Qwen3RotaryEmbedding(hf_config(None, head_dim=64))(q, pos)  # (B, T, D)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)  # unsqueezes a head axis
    torch.testing.assert_close(impl.apply_rope(q, cos[:, None], sin[:, None]), want_q)
    torch.testing.assert_close(impl.apply_rope(k, cos[:, None], sin[:, None]), want_k)


def test_score_depends_only_on_distance(impl):
    """The point of RoPE: after rotation, q_m . k_n depends on m - n only (and the rotation keeps lengths)."""
    torch.manual_seed(0)
    rope = impl.RotaryEmbedding(64, 1e6)
    q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)

    def rotated(x, m):
        cos, sin = rope(torch.tensor([[m]]), torch.float32)  # angles in fp32: equal to ~1e-6
        return impl.apply_rope(x, cos, sin)

    def score(m, n):
        return (rotated(q, m) * rotated(k, n)).sum()

    # at position 1005 the angles' float32 rounding alone moves the score by ~1e-5: allow 1e-4
    torch.testing.assert_close(score(5, 2), score(1005, 1002), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3))
    torch.testing.assert_close(rotated(q, 777).norm(), q.norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_angles_in_float32_at_large_positions(impl, dtype):
    """Positions reach 131,072 with YaRN. Angles computed in the model's dtype are exact at position 1 and wrong by
    whole radians at 10^5 (bf16 keeps 8 bits: 100,000 becomes 99,840; fp16 overflows past 65,504): compute the
    angles in float32 and cast only the finished cos and sin."""
    pos = torch.tensor([[1, 5000, 100_000, 131_071]])
    cos, sin = impl.RotaryEmbedding(128, 1e6, QWEN3_YARN)(pos, dtype)
    assert cos.dtype == sin.dtype == dtype
    want_cos, want_sin = Qwen3RotaryEmbedding(hf_config(QWEN3_YARN))(torch.zeros(1), pos)  # (B, T, D), fp32 angles
    torch.testing.assert_close(cos[:, 0].float(), want_cos, rtol=0, atol=1e-2)
    torch.testing.assert_close(sin[:, 0].float(), want_sin, rtol=0, atol=1e-2)


def test_rotation_pairs_i_and_i_plus_half(impl):
    """Rotate-half: dimension i pairs with i + D/2 (not 2i with 2i+1), and a quarter turn sends (1, 0) to (0, 1)."""
    D = 8
    x = torch.zeros(1, 1, 1, D)
    x[..., 0] = 1.0
    cos = torch.zeros(1, 1, 1, D)
    sin = torch.ones(1, 1, 1, D)  # every pair turned by 90 degrees
    want = torch.zeros(1, 1, 1, D)
    want[..., D // 2] = 1.0
    torch.testing.assert_close(impl.apply_rope(x, cos, sin), want)


def test_attention_factor_and_legacy_type_key(impl):
    """YaRN's attention_factor, when given, replaces the computed scale; a config's legacy "type" key names the
    rope type as "rope_type" does (transformers reads both)."""
    s = {**QWEN3_YARN, "attention_factor": 0.8}
    want_cos, want_sin = Qwen3RotaryEmbedding(hf_config(s))(torch.zeros(1), POS)
    cos, sin = impl.RotaryEmbedding(128, 1e6, s, 40960)(POS, torch.float32)
    assert_tables_close(cos[:, 0], want_cos, "cos")
    legacy = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    want_cos, _ = Qwen3RotaryEmbedding(hf_config(QWEN3_YARN))(torch.zeros(1), POS)
    assert_tables_close(impl.RotaryEmbedding(128, 1e6, legacy, 40960)(POS, torch.float32)[0][:, 0], want_cos,
                        "cos with the legacy key")
