"""SMILES strings as token sequences: the tokenizer of the `smiles` modality (pure Python).

Atom-level tokens as in the Molecular Transformer / MoleculeSTM's SMILES branch: a bracket
atom (`[C@@H]`, `[NH3+]`) is one token, so are two-letter organic atoms (`Cl`, `Br`), ring-bond
labels (`%10`), bonds, branches and aromatic atoms. The vocabulary is fixed here (so that token
ids never depend on a dataset): four specials, the organic subset, bonds, ring digits and the
bracket atoms frequent in drug-like molecules; any other token (a rare bracket atom, `%nn`)
is `[UNK]`. Ids: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, matching the other tokenizers' layout.
A sequence is `[CLS] tokens [SEP]`, truncated to `max_len` tokens in all.
"""
from __future__ import annotations

import re

from molbind_data.featurize import INVALID_SMILES, SkipRecord

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
_ORGANIC = ("C", "N", "O", "S", "P", "F", "Cl", "Br", "I", "B", "c", "n", "o", "s", "p", "b", "*")
_SYNTAX = ("(", ")", "=", "#", "-", "+", "/", "\\", ".", ":", "~", "@", "$") + tuple("0123456789")
_BRACKETS = (
    "[C@H]", "[C@@H]", "[C@]", "[C@@]", "[nH]", "[NH]", "[NH2]", "[NH+]", "[NH2+]", "[NH3+]", "[N+]",
    "[N-]", "[n+]", "[n-]", "[O-]", "[OH]", "[O+]", "[o+]", "[S+]", "[S-]", "[S@]", "[S@@]", "[s+]",
    "[P+]", "[P@]", "[P@@]", "[Se]", "[se]", "[Si]", "[B-]", "[Na+]", "[K+]", "[Li+]", "[Ca+2]",
    "[Mg+2]", "[Zn+2]", "[Fe+2]", "[Fe+3]", "[Cu+2]", "[Cl-]", "[Br-]", "[I-]", "[H]", "[2H]",
    "[13C]", "[13CH]", "[11C]", "[18F]", "[123I]", "[125I]", "[CH]", "[CH2]", "[C-]", "[c-]",
    "[N@]", "[N@@]", "[N@+]", "[N@@+]", "[Pt]", "[Fe]", "[Co]", "[Cu]", "[Zn]", "[Gd]", "[As]",
    "[Hg]", "[Sn]", "[Al]", "[Au]", "[Ag]", "[Mn]", "[Ni]", "[Cr]", "[Te]", "[Ge]",
)
VOCAB = SPECIALS + _ORGANIC + _SYNTAX + _BRACKETS
INDEX = {t: i for i, t in enumerate(VOCAB)}
PAD, CLS, SEP, UNK = 0, 1, 2, 3
MAX_LEN = 128

_TOKEN = re.compile(r"\[[^\]]+\]|Br|Cl|%\d{2}|[BCNOPSFIbcnops*()=#\-+/\\.:~@$0-9]|.")


def tokens(smiles: str) -> list[str]:
    """The atom-level tokens of a SMILES string; refuses an empty string and unbalanced
    brackets or parentheses (SkipRecord invalid_smiles)."""
    smiles = smiles.strip() if isinstance(smiles, str) else ""
    if not smiles or " " in smiles:
        raise SkipRecord(INVALID_SMILES, f"{smiles!r} is not one SMILES string")
    out = _TOKEN.findall(smiles)
    if "".join(out) != smiles or smiles.count("(") != smiles.count(")") or any(t in "[]" for t in out):
        raise SkipRecord(INVALID_SMILES, f"{smiles!r}: unbalanced brackets or parentheses")
    return out


def encode(smiles: str, max_len: int = MAX_LEN) -> list[int]:
    """[CLS] token ids [SEP], at most `max_len` ids (the tail of a long SMILES is cut)."""
    ids = [INDEX.get(t, UNK) for t in tokens(smiles)][: max_len - 2]
    return [CLS] + ids + [SEP]
