"""RoPE and YaRN frequencies against transformers' implementation."""
import pytest
import torch

from minqwen3.rope import RotaryEmbedding, apply_rope


@pytest.mark.parametrize("scaling", [None, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
                                     {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096,
                                      "beta_fast": 16, "truncate": False}])
def test_cos_sin_match_transformers(scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding
    cfg = transformers.Qwen3Config(head_dim=128, rope_theta=1e6, max_position_embeddings=40960,
                                   **({"rope_scaling": scaling} if scaling else {}))
    theirs = Qwen3RotaryEmbedding(cfg)
    ours = RotaryEmbedding(128, 1e6, scaling, 40960)
    pos = torch.tensor([[0, 1, 7, 1000, 32767, 40000, 131071]])
    c1, s1 = theirs(torch.zeros(1, dtype=torch.float32), pos)
    c2, s2 = ours(pos, torch.float32)
    torch.testing.assert_close(c2[:, 0], c1, rtol=0, atol=1e-6)
    torch.testing.assert_close(s2[:, 0], s1, rtol=0, atol=1e-6)


def test_rotation_is_relative():
    """q·k after RoPE depends only on the distance between positions: the point of rotary embeddings."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(64, 1e6)
    q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)

    def score(i, j):
        ci, si = rope(torch.tensor([[i]]), torch.float32)
        cj, sj = rope(torch.tensor([[j]]), torch.float32)
        return (apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum()
    torch.testing.assert_close(score(5, 2), score(105, 102))
    assert not torch.allclose(score(5, 2), score(5, 3))
