"""minqwen3/bytecode.py: whether Python keeps a module's bytecode, read as importlib does; where it does not, the
bytecode of later imports under the user's cache directory, at the path importlib itself reads it from; and the
command line asking for that before torch's first import."""
import importlib
import importlib.util
import os
import py_compile
import subprocess
import sys
from pathlib import Path

from minqwen3 import bytecode

ROOT = Path(__file__).resolve().parents[1]


def test_kept_reads_the_pyc_as_python_does(tmp_path, monkeypatch):
    src = tmp_path / "mq3_probe_mod.py"
    src.write_text("X = 41 + 1\n")
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert not bytecode.kept(str(src))  # no .pyc, and Python may not write one
    py_compile.compile(str(src), cfile=importlib.util.cache_from_source(str(src)))
    assert bytecode.kept(str(src))  # current
    st = src.stat()
    os.utime(src, (st.st_atime, st.st_mtime + 10))
    assert not bytecode.kept(str(src))  # stale: the source changed after it
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert bytecode.kept(str(src))  # stale, but Python rewrites it at the import


def test_use_cache_where_the_package_keeps_no_bytecode(tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "mq3_probe_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 41 + 1\n")
    (pkg / "inner.py").write_text("Y = 6 * 7\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(bytecode, "in_use", "")
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE: nothing beside the sources
    for name in ("mq3_probe_pkg", "mq3_probe_pkg.inner"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert bytecode.use_cache("mq3_no_such_package") == ""  # nothing to probe
    monkeypatch.setenv("MINQWEN3_BYTECODE_CACHE", "0")
    assert bytecode.use_cache("mq3_probe_pkg") == "" and sys.pycache_prefix is None  # turned off
    monkeypatch.delenv("MINQWEN3_BYTECODE_CACHE")
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # Python would keep it beside the source itself
    assert bytecode.use_cache("mq3_probe_pkg") == "" and sys.pycache_prefix is None
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = bytecode.use_cache("mq3_probe_pkg")
    assert path == str(tmp_path / "cache" / "minqwen3" / "pycache") == sys.pycache_prefix
    assert not sys.dont_write_bytecode and bytecode.use_cache() == path  # once per process
    assert importlib.import_module("mq3_probe_pkg.inner").Y == 42
    for src in (pkg / "__init__.py", pkg / "inner.py"):
        pyc = Path(importlib.util.cache_from_source(str(src)))
        assert pyc.is_file() and pyc.is_relative_to(path)
    assert not (pkg / "__pycache__").exists()  # nothing beside the sources


def test_a_users_prefix_stands(tmp_path, monkeypatch):
    monkeypatch.setattr(bytecode, "in_use", "")
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "mine"))
    assert bytecode.use_cache() == "" and sys.pycache_prefix == str(tmp_path / "mine")


def test_the_command_line_asks_before_importing_torch(tmp_path):
    """cli.main calls bytecode.use_cache after parsing, before anything imports torch (a fresh process: this one
    has torch already)."""
    code = ("import sys\nfrom minqwen3 import bytecode, cli\ncalls = []\n"
            "bytecode.use_cache = lambda *a: calls.append('torch' in sys.modules) or ''\n"
            f"cli.main(['generate', '--model', {str(tmp_path / 'missing')!r}, 'hi'])\n"
            "print('torch imported before the call:', calls, 'after:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "torch imported before the call: [False] after: True" in out.stdout, out.stdout + out.stderr
