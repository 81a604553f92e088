"""python -m minqwen3 verify: passes on a faithful checkpoint, fails (non-zero) on a tampered one."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import hf_model


def test_verify_cli_agrees_then_catches_a_difference(tmp_path, capsys):
    from minqwen3.cli import main
    hf_model(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32).save_pretrained(tmp_path)
    assert main(["verify", str(tmp_path), "--tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "OK: minqwen3 and transformers agree" in out and "8/8" in out
    # both sides read the same file, so break minqwen3's side: a 1% error in RMSNorm must be caught
    import minqwen3.rmsnorm as rn
    orig = rn.RMSNorm.forward
    try:
        rn.RMSNorm.forward = lambda self, x: orig(self, x) * 1.01
        assert main(["verify", str(tmp_path), "--tokens", "8"]) == 1
    finally:
        rn.RMSNorm.forward = orig
    assert "FAIL" in capsys.readouterr().out


def test_verify_missing_folder_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minqwen3", "verify", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 1 and "does not exist; a checkpoint folder holds config.json" in r.stderr
    assert "Traceback" not in r.stderr


WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.mark.slow
def test_verify_passes_on_the_bundled_checkpoints_and_fails_on_altered_ones(tmp_path, capsys):
    """transformers and minqwen3 both stop at the first end-of-turn (the old verify masked it on one side only,
    and printed FAIL with a logit difference of 0.0 on our own demo models)."""
    from minqwen3.cli import main
    for name in ("demo-dense", "demo-moe"):
        assert main(["verify", str(WEIGHTS / name)]) == 0
        out = capsys.readouterr().out
        assert "OK: minqwen3 and transformers agree" in out and "disagree" not in out
    # an altered copy: one weight NaN, which would make both sides write garbage alike, is refused by name
    copy = tmp_path / "demo-dense"
    shutil.copytree(WEIGHTS / "demo-dense", copy)
    tensors = load_file(copy / "model.safetensors")
    tensors["model.layers.2.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    assert main(["verify", str(copy)]) == 1
    assert "NaN or Inf values in 1 tensor(s): ['model.layers.2.mlp.up_proj.weight']" in capsys.readouterr().err
    # and minqwen3 altered (a 1% error in RMSNorm): verify must see it
    import minqwen3.rmsnorm as rn
    orig = rn.RMSNorm.forward
    try:
        rn.RMSNorm.forward = lambda self, x: orig(self, x) * 1.01
        assert main(["verify", str(WEIGHTS / "demo-moe"), "--tokens", "8"]) == 1
    finally:
        rn.RMSNorm.forward = orig
    out = capsys.readouterr().out
    assert "FAIL: minqwen3 and transformers disagree" in out and "<- disagree" in out


def test_until_stop_compares_replies_up_to_their_first_stop():
    from minqwen3.verify import _until_stop
    assert _until_stop([5, 6, 151645, 7], {151645, 151643}) == [5, 6, 151645]
    assert _until_stop([151643, 1], {151645, 151643}) == [151643]
    assert _until_stop([1, 2, 3], {151645}) == [1, 2, 3]


def test_a_greedy_split_at_a_near_tie_is_told_from_a_real_one(tmp_path):
    """In bf16 two faithful models may break a near-tie differently: verify passes greedy tokens that part where
    both models put the two choices within the logit tolerance (_near_tie gives the gap), and fails them where one
    choice is far below the other (None)."""
    import torch
    import transformers

    import minqwen3
    from minqwen3.verify import _near_tie
    hf_model().save_pretrained(tmp_path)
    ours = minqwen3.from_pretrained(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prefix = [5, 17, 42, 7]  # the prompt and the first new token (7), which both sides wrote
    with torch.no_grad():
        logits = ours(torch.tensor([prefix]))[0, -1]
    order = logits.argsort(descending=True).tolist()
    best, second, worst = order[0], order[1], order[-1]
    gap, far = (logits[best] - logits[second]).item(), (logits[best] - logits[worst]).item()
    tol = (gap + far) / 2  # holds the runner-up, not the last token
    a = [7, best]  # the sides part at position 1
    assert _near_tie(ours, theirs, prefix, a, [7, second], 1, tol) == pytest.approx(gap, abs=1e-4)
    assert _near_tie(ours, theirs, prefix, a, [7, worst], 1, tol) is None
    assert _near_tie(ours, theirs, prefix, a, [7], 1, tol) is None  # one side stopped


@pytest.mark.parametrize("kw, msg", [
    (dict(dtype="fp32"), "dtype must be one of float32, bfloat16, float16, got 'fp32'"),
    (dict(dtype="int8"), "dtype.*got 'int8'"), (dict(new_tokens=0), "new_tokens.*got 0"),
    (dict(new_tokens=2.5), "new_tokens.*got 2.5")])
def test_verify_arguments_checked_before_loading(tmp_path, monkeypatch, kw, msg):
    """The public function, not only the CLI: a bad dtype or token count fails at once, naming it (it was an
    AttributeError, or an error inside transformers once both models had loaded)."""
    import minqwen3.verify as verify
    monkeypatch.setattr(verify, "from_pretrained", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(ValueError, match=msg):
        verify.verify(tmp_path, **kw)
