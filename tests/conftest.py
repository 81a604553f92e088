"""Shared test helpers: tiny random models built by transformers (the oracle) and saved in the official layout."""
import os
from pathlib import Path

import pytest
import torch

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "qwen3"
ASSETS = Path(__file__).resolve().parents[1] / "minqwen3" / "assets"
# The official files that serve as oracles, by SHA-256: ../shared holds them where CI runs; on a clone without it
# the package's shipped copies are the same bytes (test_offline.py checks the hashes), rendered and tokenised by
# jinja2 and the tokenizers library, not by minqwen3
OFFICIAL_SHA256 = {"tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
                   "chat_template.jinja": "a55ee1b1660128b7098723e0abcd92caa0788061051c62d51cbe87d9cf1974d8"}


def official_file(name: str) -> Path:
    """The official file `name` (a key of OFFICIAL_SHA256): ../shared's copy, else the package's."""
    return REF / name if (REF / name).is_file() else ASSETS / name
TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512, tie_word_embeddings=False)

torch.set_num_threads(min(2, os.cpu_count() or 1))


def hf_model(seed: int = 0, **overrides):
    """A tiny random transformers Qwen3 (or Qwen3-MoE when num_experts is given), fp32, eval mode."""
    transformers = pytest.importorskip("transformers")
    kw = {**TINY, **overrides}
    torch.manual_seed(seed)
    if kw.get("num_experts"):
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**kw))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw))
    with torch.no_grad():  # RMSNorm weights start at 1; randomise them so a mixed-up norm cannot hide
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model.eval()


def hf_greedy(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """n greedy tokens from transformers, recomputing the whole sequence each step (no cache)."""
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.fixture
def ref():
    if not REF.is_dir():
        pytest.skip(f"reference data not found at {REF}")
    return REF


def pytest_collection_modifyitems(config, items):
    """GPU tests run where CUDA is; elsewhere (CI) they skip with a reason instead of failing."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Tiny models: one thread is many times faster than two waiting on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
