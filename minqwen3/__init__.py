"""minqwen3: Qwen3 from scratch, in plain PyTorch."""
from .assistant import EARLY_STOP, Reply, chat
from .cache import KVCache, make_cache
from .chat_template import apply_chat_template, parse_reply
from .checkpoint import CheckpointError, from_pretrained, save_pretrained
from .config import PRESETS, Qwen3Config, count_params
from .generation import Decoder, generate, sample
from .model import Qwen3, random_model
from .tokenizer import Tokenizer

__all__ = ["Qwen3", "Qwen3Config", "KVCache", "make_cache", "CheckpointError", "from_pretrained", "save_pretrained",
           "count_params", "PRESETS", "generate", "sample", "Decoder", "chat", "Reply", "EARLY_STOP",
           "apply_chat_template", "parse_reply", "Tokenizer", "random_model"]
