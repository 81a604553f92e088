"""minqwen3: Qwen3 from scratch, in plain PyTorch.

The names below are imported on first use (PEP 562), so that `python -m minqwen3 --help` answers at once instead of
loading torch first (seconds).
"""
import importlib
import sys
import types

_WHERE = {"Qwen3": "model", "Qwen3Config": "config", "KVCache": "cache", "CheckpointError": "checkpoint",
          "from_pretrained": "checkpoint", "save_pretrained": "checkpoint", "count_params": "config",
          "PRESETS": "config", "generate": "generate", "sample": "generate", "Session": "generate", "chat": "chat",
          "Reply": "chat", "EARLY_STOP": "chat", "apply_chat_template": "chat_template", "parse_reply": "chat_template",
          "Tokenizer": "tokenizer"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE and not name.startswith("__"):  # a module (minqwen3.rope, ...), as if all were imported
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


class _Package(types.ModuleType):
    """minqwen3.chat and minqwen3.generate are functions, named as their modules are. Importing such a module sets
    the package's attribute to the module; keep the function there instead (the module is in sys.modules)."""

    def __setattr__(self, name: str, value) -> None:
        if not (isinstance(value, types.ModuleType) and _WHERE.get(name) == name):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
