"""The source interface: candidates per pair type, their split and the (key, raw) records."""
from __future__ import annotations

import functools
import hashlib
from typing import Iterator

from . import chebi, pubchem
from .ccd import _conformer_text_candidates
from .common import PROVIDES, SPLITS, max_records, resolve_options, split_of_smiles, split_quotas, take_per_split
from .pockets import _conformer_pocket_candidates, pocket_split_of
from .qm9 import _graph_conformer_candidates


@functools.lru_cache(maxsize=16)
def _graph_text_candidates(cap, seed) -> tuple:
    """ChEBI molecules first (class definitions: the richer text), then PubChem molecules up to
    the cap, per split (take_per_split); a small cap holds ChEBI molecules only."""
    split = lambda k, r: split_of_smiles(r["smiles"])  # noqa: E731
    first = take_per_split(chebi.graph_text_stream(seed), cap, split)
    if cap is None:
        quota = None
    else:
        quota = split_quotas(cap)
        for _, raw in first:
            quota[split(None, raw)] -= 1
        if not any(v > 0 for v in quota.values()):
            return first
        quota = {s: max(0, n) for s, n in quota.items()}
    blocks = frozenset(k.split("-")[0] for k in chebi._chebi_inchikeys().values() if k)
    rest = pubchem.graph_text_stream(seed, blocks, frozenset(s for s, _ in first))
    return first + (tuple(rest) if quota is None else take_per_split(rest, None, split, quota=quota))


def candidates(pair: str, options: dict) -> tuple:
    options = resolve_options(options)
    cap, seed = max_records(pair, options), int(options["seed"])
    if pair == "graph_text":
        return _graph_text_candidates(cap, seed)
    if pair == "conformer_text":
        return _conformer_text_candidates(cap, seed, float(options["chebi_conformer_fraction"]),
                                          int(options["chebi_conformer_max_heavy_atoms"]))
    if pair == "graph_conformer":
        return _graph_conformer_candidates(cap, seed)
    if pair == "conformer_pocket":
        return _conformer_pocket_candidates(cap, seed, str(options["pocket_split"]))
    raise ValueError(f"the mini source does not provide {pair!r}; it provides {PROVIDES}")


def split_of(pair: str, key: str, raw: dict, options: dict | None = None) -> str:
    if pair == "conformer_pocket":
        return pocket_split_of(raw, str(resolve_options(options)["pocket_split"]))
    return split_of_smiles(raw["smiles"])


def raw_records(pair: str, split: str, options: dict | None = None) -> Iterator[tuple[str, dict]]:
    """(key, raw) of one split, in a deterministic order; cheap (no featurization)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    for key, raw in candidates(pair, options):
        if split_of(pair, key, raw, options) == split:
            src = raw.get("source", "chebi" if pair == "graph_text" else "")
            if pair != "conformer_pocket":
                # Ids name the molecule by a hash of its SMILES: TFDS rewrites backslashes in keys
                # to "/", which would make E/Z isomers collide.
                key = f"{src}/{hashlib.sha1(key.encode()).hexdigest()[:16]}"
            yield f"mini/{pair}/{key}", raw

