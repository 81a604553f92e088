"""The warm start: what lets a second process reach its first compiled tokens in seconds, not half a minute.

A compiling Decoder (generation.py) pays, in every new process, for things that have nothing to do with the
model: importing torch.compile's machinery (Dynamo, Inductor, the compile-worker pool), the first use of the GPU's
libraries (cuBLAS, the attention kernels), and, on torch 2.11, tuning again kernels whose tuned launch settings
are already in the cache; and where the installation keeps no usable bytecode of torch's modules, compiling
Dynamo's and Inductor's thousands of modules from source in every process. Small pieces remove or hide that:

- use_compile_cache(): torch.compile's caches live under the user's cache directory, so that a second process
  finds its graphs, kernels and tuned launch settings (also after a reboot).
- bytecode.use_cache() (bytecode.py): Python's bytecode of the modules imported from then on lives there too,
  where torch's own .pyc files are missing or stale and Python may not write them beside the sources (a read-only
  installation, or PYTHONDONTWRITEBYTECODE): otherwise every process compiles Dynamo and Inductor from source. On
  the H200 (no bytecode in its torch, PYTHONDONTWRITEBYTECODE set) Dynamo's import took 6.1 s against 1.45 s from
  this cache, and a warm first call 7.3 against 4.3-4.9 s after loading (docs/benchmarks.md, session 9).
- start(): Dynamo is imported at once (loading a checkpoint would import it anyway), then a background thread does
  the other imports and the libraries' first use while the checkpoint loads; a compiling Decoder waits for it
  (wait()) before its first compilation. chat and generate start it as they begin to load a model onto a GPU.
  It takes that work out of the first call; whether the whole wait gets shorter depends on how much of the
  loading leaves a CPU core idle (on two shared cores it did not: docs/benchmarks.md, run 8; on the H200 the
  imports, Python holding the GIL, outlast a 0.6 s loading, and the Decoder waits for the rest: 1.45 s).
- compile_in_process_if_cached() / remember_compiled(): once a model of these shapes was compiled into the cache,
  compile in the process itself: Inductor's pool of compile workers (processes that each import torch) would have
  no kernels to compile, and starting it costs seconds of CPU beside the first call.
- keep_tuned_configs(): torch 2.11 restores a cached kernel (FX-graph cache with the static CUDA launcher) without
  the launch settings that coordinate-descent tuning chose for it when the kernel had only one candidate, and
  without the mark that says they were tuned, so the first run tunes it again: seconds, every process
  (pytorch/pytorch#172819, fixed in 2.12 by #173391). Where torch's method still has that guard, a corrected one
  takes its place: it adopts the cached winner and marks it tuned. Benchmarks: docs/benchmarks.md, run 8.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import threading
import time
from pathlib import Path

import torch

from . import bytecode

_thread: threading.Thread | None = None
KEEP_TUNED = True  # keep_tuned_configs() installs its fix (bench.first_call turns it off to measure torch's own)
# what this process did, for bench.first_call: Dynamo's import before the thread, the thread's seconds, how long a
# Decoder waited for it, kernels restored with their cached tuning
STATS = {"dynamo_s": None, "warm_s": None, "warm_error": None, "wait_s": 0.0,
         "adopted": 0, "compiled": 0, "compile_s": 0.0, "not_cached": 0, "fallback": 0}


def use_compile_cache() -> str:
    """Keep torch.compile's caches under the user's cache directory, so that a second process starts warm: the
    kernels Inductor generated, their tuned launch settings and AOTAutograd's compiled graphs are found there and
    nothing is compiled again. ~/.cache/minqwen3/inductor ($XDG_CACHE_HOME respected), unless
    TORCHINDUCTOR_CACHE_DIR is set (then that, as torch would); torch's own default is /tmp/torchinductor_$USER,
    which many systems empty at boot. Returns the directory. Set for this process, so it must run before the first
    compilation (a Decoder that compiles calls it); "" where no such directory can be made (torch's default).
    Keeps Python's bytecode there too where it must (bytecode.use_cache), before importing Inductor."""
    bytecode.use_cache()
    try:  # importing Inductor sets the variable to torch's default: that one is not the user's choice
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        default = os.path.abspath(default_cache_dir())
    except (ImportError, AttributeError):
        default = None
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, "", default):
        path = os.path.join(bytecode.cache_home(), "minqwen3", "inductor")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:  # no writable home: torch's default it is
            return ""
        if not os.access(path, os.W_OK | os.X_OK):  # there, but not ours to write (compiling would fail in it)
            return ""
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def _prepare(device: torch.device, dtype: torch.dtype) -> None:
    """The thread's work: each step is what a first compiled call would otherwise do itself, later. (Modules are
    imported by name: an `import torch.x` here would make `torch` a local name of this function.)"""
    if device.type == "cuda":
        # Triton's key of its own installation (hashes of its sources and of its library, hundreds of MB), made once
        # per process at the first launch of a Triton kernel: the eager prefill's (0.49 s under cProfile, session
        # 9). First, beside the loading: reading and hashing release the GIL. Not yet measured on its own.
        try:
            getattr(importlib.import_module("triton.runtime.cache"), "triton_key", lambda: None)()
        except ImportError:  # no Triton: the compiled call will say so itself
            pass
    use_compile_cache()  # imports Inductor's package: seconds
    if device.type == "cuda":
        # The GPU's libraries: a matrix product loads cuBLAS and makes a handle (torch returns it to a pool when
        # this thread ends; the main thread takes it from there), attention loads its kernels. Sizes of a prefill.
        x = torch.ones(1, 8, 128, 128, device=device, dtype=dtype)  # not randn: the user's random stream is theirs
        torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
        (x[0, 0] @ x[0, 0].T).float().softmax(-1).argmax(-1)
        torch.cuda.synchronize(device)
    # torch.compile's machinery, in the order its first use imports it
    for name in ("torch._inductor.compile_fx", "torch._inductor.runtime.triton_heuristics"):
        importlib.import_module(name)
    # Inductor's pool of compile workers is not started here: with the model's kernels in the cache it has nothing
    # to do (compile_in_process_if_cached), and otherwise the first compilation starts it
    if device.type == "cuda":  # Triton's launcher utilities, built or loaded from its cache
        importlib.import_module("triton.runtime.driver").driver.active.get_current_device()


def _run(device: torch.device, dtype: torch.dtype) -> None:
    t = time.perf_counter()
    try:
        _prepare(device, dtype)
    except Exception as e:  # noqa: BLE001 (a head start only: what fails here, the first call does again, and says)
        STATS["warm_error"] = f"{type(e).__name__}: {e}"[:200]
    STATS["warm_s"] = time.perf_counter() - t


def start(device: str | torch.device, dtype: torch.dtype | None = None) -> threading.Thread | None:
    """Begin the compile stack's imports and the GPU libraries' first use in a background thread (once per
    process; only for a CUDA device). Call it when a model starts loading onto the GPU: the work overlaps the
    loading. Returns the thread, or None where there is nothing to do."""
    device = torch.device(device)
    if device.type != "cuda" or _thread is not None:
        return _thread
    return _start(device, dtype or torch.bfloat16)


def _start(device: torch.device, dtype: torch.dtype) -> threading.Thread:
    global _thread
    bytecode.use_cache()  # before the imports, the thread's and Dynamo's
    # Dynamo is imported here, in the caller's thread, before the loading: loading a checkpoint imports it too
    # (torch's initialisers on the meta device do), and two threads importing Dynamo and Inductor at once can each
    # get the other's half-imported module (seen: ImportError, 'cannot import name IndentedBuffer from
    # torch._inductor.utils', in 6 of 8 loadings of a 0.6B checkpoint beside the thread).
    t = time.perf_counter()
    importlib.import_module("torch._dynamo")
    STATS["dynamo_s"] = time.perf_counter() - t
    _thread = threading.Thread(target=_run, args=(device, dtype), daemon=True, name="minqwen3-warm-start")
    _thread.start()
    return _thread


def wait() -> None:
    """Let start()'s thread finish (a compiling Decoder calls this): two threads must not import the same
    modules at once, which can hand one of them a half-initialised module."""
    if _thread is not None:
        t = time.perf_counter()
        _thread.join()
        STATS["wait_s"] += time.perf_counter() - t


def keep_tuned_configs() -> bool:
    """Make torch keep the tuned launch settings it cached (the module docstring says why). Installed once, only
    where torch's CachingAutotuner.recheck_autotune_cache still skips kernels of one candidate (torch <= 2.11);
    returns whether the corrected method is in place."""
    if not KEEP_TUNED:
        return False
    try:
        from torch._inductor.runtime import triton_heuristics as th
        tuner = th.CachingAutotuner
        original = tuner.recheck_autotune_cache
    except (ImportError, AttributeError):
        return False
    if getattr(original, "_minqwen3", False):
        return True
    try:
        buggy = "len(configs) > 1" in inspect.getsource(original)
    except (OSError, TypeError):
        buggy = False
    if not buggy:
        return False

    def recheck_autotune_cache(self, reload_kernel_from_src):
        """torch's method without the guard: the cached winner is adopted whatever the number of candidates."""
        try:
            return adopt_cached_winner(self, reload_kernel_from_src, th)
        except Exception:  # noqa: BLE001 (torch's internals moved: torch's own method, as if never replaced)
            STATS["fallback"] += 1
            return original(self, reload_kernel_from_src)

    recheck_autotune_cache._minqwen3 = True
    tuner.recheck_autotune_cache = recheck_autotune_cache
    return True


def adopt_cached_winner(tuner, reload_kernel_from_src, th) -> None:
    """What recheck_autotune_cache should do for a kernel restored from the FX-graph cache (tuner: its
    CachingAutotuner, holding the compiled candidates; th: torch's triton_heuristics): look its launch settings up
    in the autotune cache, keep only the cached winner (compiling it if tuning found it after the graph was
    cached), and mark it as tuned, so that its first run neither benchmarks candidates nor tunes again."""
    configs = [r.config for r in tuner.compile_results]
    cached, _, info = th.check_autotune_cache(configs, tuner.filename, tuner.inductor_meta)
    if cached is configs or len(cached) != 1:  # a miss hands the candidates back; nothing cached: torch tunes
        tuner.autotune_cache_info = info
        STATS["not_cached"] += 1
        return
    best = cached[0]
    key = th.triton_config_to_hashable(best)
    match = [r for r in tuner.compile_results if th.triton_config_to_hashable(r.config) == key]
    if match:
        result = match[0]
        STATS["adopted"] += 1
    else:
        t = time.perf_counter()
        if tuner.fn.fn is None:  # restored kernels keep no Python function: load it from the kernel's source
            tuner.fn = reload_kernel_from_src().fn
        result = tuner._precompile_config(best)  # Triton finds the binary in its own cache
        STATS["compiled"] += 1
        STATS["compile_s"] += time.perf_counter() - t
    result.config.found_by_coordesc = getattr(best, "found_by_coordesc", False)
    tuner.autotune_cache_info = info
    tuner.compile_results = [result]
    # a cached winner is final: halving its block size (for occupancy) would give the tuner a choice to make anew
    tuner.inductor_meta = {**tuner.inductor_meta, "dynamic_scale_rblock": False}


def _marker(config, dtype: torch.dtype, device: torch.device) -> Path | None:
    """The file that says a model of config's shapes was compiled into this cache before, by this torch, for this
    device and dtype (None where there is no cache directory set)."""
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not cache:
        return None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    what = json.dumps([torch.__version__, gpu, str(dtype), dataclasses.asdict(config)], sort_keys=True, default=str)
    return Path(cache) / "minqwen3-compiled" / hashlib.sha256(what.encode()).hexdigest()[:32]


def compile_in_process_if_cached(config, dtype: torch.dtype, device: torch.device) -> bool:
    """Where remember_compiled() marked these shapes, have Inductor compile in this process (compile_threads = 1,
    for the rest of the process): its kernels come from the cache, so the worker pool would only cost its start.
    A user's TORCHINDUCTOR_COMPILE_THREADS wins. Returns whether it did so."""
    marker = _marker(config, dtype, device)
    if os.environ.get("TORCHINDUCTOR_COMPILE_THREADS") or marker is None or not marker.is_file():
        return False
    from torch._inductor import config as inductor_config
    inductor_config.compile_threads = 1
    return True


def remember_compiled(config, dtype: torch.dtype, device: torch.device) -> None:
    """Mark config's shapes as compiled into this cache (a compiling Decoder calls it after its first capture)."""
    marker = _marker(config, dtype, device)
    if marker is not None and not marker.is_file():
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:  # a read-only cache: the next process starts the pool, as torch would
            pass
