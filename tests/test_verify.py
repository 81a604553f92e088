"""python -m minqwen3 verify: passes on a faithful checkpoint, fails (non-zero) on a tampered one."""
import subprocess
import sys

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
