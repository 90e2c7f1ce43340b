"""The leakage audit on plain records (no TensorFlow): what a model evaluated on a pair type's
validation or test split may have seen in training.

    sections = audit({"graph_text": {"train": [{"smiles": "CCO", "text": "Ethanol"}, ...],
                                     "test": [...]}, "conformer_pocket": {...}})
    sections["graph_text"]["molecules"]["test"]["in_train"]

`records` maps pair type -> split -> records, each a dict with any of `smiles`, `text`,
`target` (str or bytes; a missing or empty value means the record has none). "Training" is
the union of the train splits of every pair type given, so a test molecule of graph_text seen
in conformer_text's train split counts (`by_pair` says where). Keys:

* molecule: RDKit canonical isomeric SMILES re-computed from the stored SMILES (and the same
  without stereo: `in_train_ignoring_stereo`); an empty SMILES is `no_molecule`, one RDKit
  cannot parse `unparsable` (counted per split, left out of every molecule check).
* scaffold: Bemis-Murcko scaffold SMILES (no stereo) of molecules with a ring; acyclic
  molecules have none (their count is given) and are covered by the molecule check.
* text: lower-cased, whitespace collapsed, stripped.
* target: the stored `target` name (the protein of a pocket pair).
* nearest neighbour: max Tanimoto (Morgan radius 2, 2048 bits) of each distinct test molecule
  to the distinct training molecules, over at most `max_queries` test molecules and
  `max_references` training molecules (a seeded sample when there are more; the section says
  how many were used).
"""
from __future__ import annotations

import collections
import re

import numpy as np

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
FORMAT = 1  # version of the section's layout
EXAMPLES = 5  # examples listed per finding
_SPACE = re.compile(r"\s+")
_ISOMERIC = re.compile(r"[@/\\]|\[\d")  # stereo (@, /, \\) or an isotope ([13C]) in a SMILES


def _str(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    return str(value)


def normalize_text(text) -> str:
    """Lower case, whitespace runs collapsed to one space, stripped."""
    return _SPACE.sub(" ", _str(text)).strip().lower()


class Molecules:
    """Parses each distinct SMILES once: its keys, scaffold and fingerprint (None: unparsable)."""

    def __init__(self):
        from rdkit import Chem, rdBase
        from rdkit.Chem import rdFingerprintGenerator

        self._chem = Chem
        self._logs = rdBase.BlockLogs  # RDKit's parse warnings are counted here, not printed
        self._fpgen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
        self._cache: dict[str, dict | None] = {}

    def get(self, smiles: str) -> dict | None:
        if smiles not in self._cache:
            self._cache[smiles] = self._parse(smiles)
        return self._cache[smiles]

    def _parse(self, smiles: str) -> dict | None:
        from rdkit.Chem.Scaffolds import MurckoScaffold

        Chem = self._chem
        logs = self._logs()
        try:
            mol = Chem.MolFromSmiles(smiles)
            if mol is None or mol.GetNumAtoms() == 0:
                return None
            key = Chem.MolToSmiles(mol)
            # without stereo or isotope marks the isomeric SMILES is already the flat one
            flat = Chem.MolToSmiles(mol, isomericSmiles=False) if _ISOMERIC.search(key) else key
            scaffold = ""
            if mol.GetRingInfo().NumRings():
                try:
                    core = MurckoScaffold.GetScaffoldForMol(mol)
                    scaffold = Chem.MolToSmiles(core, isomericSmiles=False)
                except Exception:  # noqa: BLE001 - a scaffold RDKit cannot cut: no scaffold
                    scaffold = ""
            return {"key": key, "flat": flat, "scaffold": scaffold, "fp": self._fpgen.GetFingerprint(mol)}
        except Exception:  # noqa: BLE001 - anything RDKit refuses is counted as unparsable
            return None
        finally:
            del logs


def _examples(values) -> list:
    return sorted(values)[:EXAMPLES]


def _split_molecules(records, mols: Molecules) -> tuple[dict, dict]:
    """{canonical key: parsed} of a split's distinct molecules, and its counts."""
    found: dict[str, dict] = {}
    counts = collections.Counter(records=0, no_molecule=0, unparsable=0)
    for r in records:
        counts["records"] += 1
        smiles = _str(r.get("smiles")).strip()
        if not smiles:
            counts["no_molecule"] += 1
            continue
        parsed = mols.get(smiles)
        if parsed is None:
            counts["unparsable"] += 1
            continue
        found.setdefault(parsed["key"], parsed)
    counts["distinct"] = len(found)
    return found, dict(counts)


def _sample(items: list, n: int, seed) -> list:
    """`items` if at most n, else n of them drawn with `seed` (kept in their order)."""
    if len(items) <= n:
        return items
    return [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), n, replace=False))]


def _nearest_neighbours(queries: dict, references: list, n_references: int, *, max_queries: int,
                        seed: int, cache: dict) -> dict:
    """Max Tanimoto of each query ({key: fingerprint}) to the (sampled) reference
    fingerprints, a summary; `cache` keeps each key's value for the next pair type."""
    from rdkit import DataStructs

    keys = _sample(sorted(queries), max_queries, seed)
    out = {"queries": len(queries), "references": n_references, "seed": seed,
           "queries_used": len(keys), "references_used": len(references)}
    if not keys or not references:
        return out
    for k in keys:
        if k not in cache:
            cache[k] = max(DataStructs.BulkTanimotoSimilarity(queries[k], references))
    best = np.array([cache[k] for k in keys])
    out.update(mean=round(float(best.mean()), 4), median=round(float(np.median(best)), 4),
               p90=round(float(np.percentile(best, 90)), 4), max=round(float(best.max()), 4),
               ge_0_9=int((best >= 0.9).sum()), eq_1_0=int((best >= 1.0 - 1e-9).sum()))
    return out


def _texts(records) -> list[str]:
    return [t for t in (normalize_text(r.get("text")) for r in records) if t]


def _repeats(texts: list[str]) -> dict:
    counts = collections.Counter(texts)
    repeated = {t: n for t, n in counts.items() if n > 1}
    top = sorted(repeated.items(), key=lambda kv: (-kv[1], kv[0]))[:EXAMPLES]
    return {"records": len(texts), "distinct": len(counts), "repeated_texts": len(repeated),
            "records_with_repeated_text": sum(repeated.values()),
            "examples": [{"text": t[:120], "count": n} for t, n in top]}


def _shared(values: set, train: dict[str, set]) -> dict:
    """How many of `values` are in the training sets (any pair; `by_pair` per pair)."""
    union = set().union(*train.values()) if train else set()
    shared = values & union
    out = {"distinct": len(values), "in_train": len(shared),
           "by_pair": {p: len(values & s) for p, s in sorted(train.items()) if values & s},
           "examples": _examples(shared)}
    return out


def audit(records: dict, *, max_queries: int = 500, max_references: int = 200_000, seed: int = 0) -> dict:
    """{pair: leakage section} for every pair type of `records` (see the module docstring)."""
    mols = Molecules()
    per: dict[str, dict[str, tuple[dict, dict]]] = {
        pair: {split: _split_molecules(splits.get(split) or (), mols) for split in SPLITS}
        for pair, splits in records.items()}
    train_keys = {p: set(per[p]["train"][0]) for p in per}
    train_flat = {p: {m["flat"] for m in per[p]["train"][0].values()} for p in per}
    train_scaffolds = {p: {m["scaffold"] for m in per[p]["train"][0].values() if m["scaffold"]} for p in per}
    train_mols: dict[str, dict] = {}
    for p in per:
        train_mols.update(per[p]["train"][0])
    # one sample of the training molecules for every pair type (its own seed: [seed, 1])
    references = [train_mols[k]["fp"] for k in _sample(sorted(train_mols), max_references, [seed, 1])]
    texts_of = {p: {s: _texts(records[p].get(s) or ()) for s in SPLITS} for p in records}
    train_texts = {p: set(t["train"]) for p, t in texts_of.items() if t["train"]}
    train_targets = {p: {_str(r.get("target")).strip() for r in records[p].get("train") or ()} - {""}
                     for p in records}
    train_targets = {p: s for p, s in train_targets.items() if s}

    sections, nn_cache = {}, {}
    for pair, splits in records.items():
        section = {"format": FORMAT, "against": sorted(records),
                   "records": {s: per[pair][s][1] for s in SPLITS}}
        molecules, scaffolds = {}, {}
        for split in EVAL_SPLITS:
            found = per[pair][split][0]
            if not found:
                continue
            molecules[split] = _shared(set(found), train_keys)
            flat = {m["flat"] for m in found.values()}
            molecules[split]["in_train_ignoring_stereo"] = len(flat & set().union(*train_flat.values()))
            ringed = {k: m["scaffold"] for k, m in found.items() if m["scaffold"]}
            scaffolds[split] = _shared(set(ringed.values()), train_scaffolds)
            all_train_scaffolds = set().union(*train_scaffolds.values()) if train_scaffolds else set()
            scaffolds[split]["molecules_with_train_scaffold"] = sum(s in all_train_scaffolds for s in ringed.values())
            scaffolds[split]["acyclic_molecules"] = len(found) - len(ringed)
        section["molecules"], section["scaffolds"] = molecules, scaffolds
        test = per[pair]["test"][0]
        if test:
            section["nearest_neighbour"] = {"test": _nearest_neighbours(
                {k: m["fp"] for k, m in test.items()}, references, len(train_mols), max_queries=max_queries,
                seed=seed, cache=nn_cache)}
        if any(texts_of[pair].values()):
            texts = {"train_duplicates": _repeats(texts_of[pair]["train"])}
            for split in EVAL_SPLITS:
                evaluated = texts_of[pair][split]
                if evaluated:
                    texts[split] = _shared(set(evaluated), train_texts)
                    texts[split]["examples"] = [t[:120] for t in texts[split]["examples"]]
            section["texts"] = texts
        targets_here = {s: {_str(r.get("target")).strip() for r in splits.get(s) or ()} - {""} for s in SPLITS}
        if any(targets_here.values()):
            own_train = set().union(*train_targets.values()) if train_targets else set()
            targets = {"train": {"distinct": len(own_train)}}
            for split in EVAL_SPLITS:
                values = targets_here[split]
                if values:
                    shared = values & own_train
                    records_shared = sum(_str(r.get("target")).strip() in own_train for r in splits.get(split) or ())
                    targets[split] = {"distinct": len(values), "in_train": len(shared),
                                      "records_with_train_target": records_shared, "shared": sorted(shared)[:20]}
            section["targets"] = targets
        sections[pair] = section
    return sections


def _fraction(n: int, d: int) -> str:
    return f"{n}/{d}"


def summary_lines(sections: dict) -> list[str]:
    """A few lines per pair type: what the printed summary of a build shows."""
    lines = []
    for pair, sec in sorted(sections.items()):
        rec = sec.get("records", {})
        bad = {s: (c.get("no_molecule", 0), c.get("unparsable", 0)) for s, c in rec.items()}
        parts = []
        for split in EVAL_SPLITS:
            m, sc = sec.get("molecules", {}).get(split), sec.get("scaffolds", {}).get(split)
            if m:
                parts.append(f"{split} molecules in train {_fraction(m['in_train'], m['distinct'])}"
                             + (f" ({m['in_train_ignoring_stereo']} ignoring stereo)"
                                if m["in_train_ignoring_stereo"] != m["in_train"] else "")
                             + (f", scaffolds {_fraction(sc['in_train'], sc['distinct'])}" if sc else ""))
        line = f"  {pair}: " + ("; ".join(parts) if parts else "no validation/test molecules")
        skipped = {s: b for s, b in bad.items() if any(b)}
        if skipped:
            line += "; without molecule/unparsable " + ", ".join(f"{s} {a}/{b}" for s, (a, b) in skipped.items())
        lines.append(line)
        nn = sec.get("nearest_neighbour", {}).get("test")
        if nn and "mean" in nn:
            sampled = f" of {nn['queries']}" if nn["queries_used"] < nn["queries"] else ""
            lines.append(f"    test->train nearest Tanimoto: mean {nn['mean']:.2f} median {nn['median']:.2f} "
                         f"p90 {nn['p90']:.2f} max {nn['max']:.2f}; >=0.9 {nn['ge_0_9']}, =1.0 {nn['eq_1_0']} "
                         f"({nn['queries_used']}{sampled} test molecules vs {nn['references_used']} train)")
        texts = sec.get("texts")
        if texts:
            dup = texts["train_duplicates"]
            shared = "; ".join(f"{s} texts in train {_fraction(texts[s]['in_train'], texts[s]['distinct'])}"
                               for s in EVAL_SPLITS if s in texts)
            lines.append(f"    texts: {dup['repeated_texts']} repeated in train ({dup['records_with_repeated_text']} "
                         f"records)" + (f"; {shared}" if shared else ""))
        targets = sec.get("targets")
        if targets:
            shared = "; ".join(f"{s} {_fraction(targets[s]['in_train'], targets[s]['distinct'])}"
                               for s in EVAL_SPLITS if s in targets)
            lines.append(f"    targets (proteins) also in train: {shared or 'no validation/test targets'}")
    return lines
