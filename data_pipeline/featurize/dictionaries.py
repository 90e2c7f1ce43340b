"""Uni-Mol token dictionaries (index = line number; `[MASK]` appended last, as the original).

The order matters: pretrained Uni-Mol embedding rows and the Gaussian-kernel edge-type tables
(`tok_i * V + tok_j`) are indexed by these ids. Uni-Mol's `dict.txt` files hold one symbol per
line, optionally followed by a count; `Dictionary.load` reads either form.
"""
from __future__ import annotations

import dataclasses

MOL_SYMBOLS = (
    "[PAD]", "[CLS]", "[SEP]", "[UNK]", "C", "N", "O", "S", "H", "Cl", "F", "Br", "I", "Si", "P",
    "B", "Na", "K", "Al", "Ca", "Sn", "As", "Hg", "Fe", "Zn", "Cr", "Se", "Gd", "Au", "Li", "[MASK]",
)
POCKET_SYMBOLS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "C", "N", "O", "S", "H", "[MASK]")


@dataclasses.dataclass(frozen=True)
class Dictionary:
    symbols: tuple[str, ...]

    PAD = 0
    CLS = 1
    SEP = 2
    UNK = 3

    def __post_init__(self):
        if self.symbols[:4] != ("[PAD]", "[CLS]", "[SEP]", "[UNK]"):
            raise ValueError(f"a Uni-Mol dictionary starts with [PAD] [CLS] [SEP] [UNK], got {self.symbols[:4]}")

    def __len__(self) -> int:
        return len(self.symbols)

    def index(self, symbol: str) -> int:
        """Id of a symbol; unknown symbols map to [UNK] (3), as `Dictionary.vec_index`."""
        return self._lookup.get(symbol, self.UNK)

    @property
    def _lookup(self) -> dict[str, int]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {s: i for i, s in enumerate(self.symbols)}
            object.__setattr__(self, "_cache", cache)
        return cache

    @classmethod
    def load(cls, path: str) -> "Dictionary":
        with open(path, encoding="utf-8") as f:
            symbols = [line.split()[0] for line in f if line.strip()]
        if "[MASK]" not in symbols:
            symbols.append("[MASK]")
        return cls(tuple(symbols))


MOL_DICTIONARY = Dictionary(MOL_SYMBOLS)
POCKET_DICTIONARY = Dictionary(POCKET_SYMBOLS)
