"""PubChem names from chemicals 1.5.2's PubChem identifier table."""
from __future__ import annotations

import csv
import functools
import os

from .common import _CODE_LIKE, package_dir


@functools.lru_cache(maxsize=1)
def pubchem_synonyms() -> dict[str, list[str]]:
    """InChIKey -> [common name, synonyms...] from chemicals' PubChem table (readable names only)."""
    path = os.path.join(package_dir("chemicals"), "Identifiers", "chemical identifiers pubchem large.tsv")
    out = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 8:
                continue
            names = [n for n in row[8:] if n and not _CODE_LIKE.match(n.upper()) and len(n) < 60]
            out[row[6]] = list(dict.fromkeys(names))
    return out

