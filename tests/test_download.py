"""The download command exists and, offline, fails with a message a user can act on."""
import subprocess
import sys


def test_download_offline_fails_clearly(tmp_path):
    dest = tmp_path / "Qwen3-0.6B"
    r = subprocess.run([sys.executable, "-m", "minqwen3", "download", "Qwen/Qwen3-0.6B", "--dir", str(dest)],
                       capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert r.returncode == 1
    assert "could not download Qwen/Qwen3-0.6B" in r.stderr and "online" in r.stderr
    assert "Traceback" not in r.stderr
    assert not any(dest.glob("*.safetensors"))  # nothing half-written
