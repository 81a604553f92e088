"""Python's bytecode of torch under the user's cache directory, where the installation keeps none.

Python compiles a module's source to bytecode at its first import and keeps it beside the source
(__pycache__/*.pyc) for the next process. Where it cannot, a read-only installation or PYTHONDONTWRITEBYTECODE
set (as on the H200 machines of docs/benchmarks.md, whose torch ships no .pyc), every process compiles torch's
thousands of modules again: `import torch` took 2.5-2.8 s against 1.4-1.5 s on a CPU, and the compiler's modules
(Dynamo, Inductor) 6.1 against 1.45 s on the H200 (session 9). use_cache() then has Python keep the bytecode of
the modules imported from then on under ~/.cache/minqwen3/pycache (sys.pycache_prefix: a mirror of the sources'
paths), so the second process reads it. Torch-free, so that the command line can call it before importing torch
(cli.main); warmstart.py calls it too, before the compiler's imports.

Nothing is written beside a source, ever: PYTHONDONTWRITEBYTECODE is honoured as that. Nothing changes where the
installation's bytecode is usable, where the user chose a prefix (PYTHONPYCACHEPREFIX), or with
MINQWEN3_BYTECODE_CACHE=0.
"""
from __future__ import annotations

import importlib.util
import os
import sys

in_use = ""  # the directory use_cache() set, "" while Python's own way stands


def cache_home() -> str:
    """The user's cache directory: $XDG_CACHE_HOME, else ~/.cache."""
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def kept(source: str) -> bool:
    """Whether a module's bytecode outlives the process in Python's own way: the .pyc beside `source` (in its
    __pycache__) is current, or Python will write it there at the import."""
    pyc = importlib.util.cache_from_source(source)  # without a prefix (use_cache checks): beside the source
    try:
        with open(pyc, "rb") as f:
            head = f.read(16)
        if len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER:
            if int.from_bytes(head[4:8], "little") & 1:  # hash-based (PEP 552): Python checks it, if at all
                return True
            st = os.stat(source)  # timestamp-based: valid while the source's mtime and size match
            if head[8:16] == ((int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                              + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")):
                return True
    except OSError:
        pass
    folder = os.path.dirname(pyc)
    return not sys.dont_write_bytecode and os.access(folder if os.path.isdir(folder) else os.path.dirname(folder),
                                                      os.W_OK)


def use_cache(package: str = "torch") -> str:
    """Keep the bytecode of later imports under ~/.cache/minqwen3/pycache if `package`'s own is not kept (its
    __init__.py as the probe, found without importing it). Once per process; returns the directory in use, or ""
    (Python's own way: the bytecode is kept, the user chose a prefix, MINQWEN3_BYTECODE_CACHE=0, no such package,
    or no writable cache directory)."""
    global in_use
    if in_use or sys.pycache_prefix is not None:  # done already, or the user's own prefix
        return in_use
    if os.environ.get("MINQWEN3_BYTECODE_CACHE") == "0":
        return ""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return ""
    source = spec.origin if spec is not None else None
    if not source or not source.endswith(".py") or not os.path.isfile(source) or kept(source):
        return ""
    path = os.path.join(cache_home(), "minqwen3", "pycache")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return ""
    if not os.access(path, os.W_OK):
        return ""
    sys.pycache_prefix, sys.dont_write_bytecode = path, False  # importlib reads both at every import
    in_use = path
    return path
