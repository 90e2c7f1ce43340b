"""Zero-shot classification tasks over held-out molecules (for evaluation)."""
from __future__ import annotations

from .chebi import _class_index, chebi_molecules
from .common import SPLITS, _hash_order, split_of_smiles


def classification_tasks(split: str = "test", *, max_queries: int = 500, num_name_candidates: int = 500,
                         min_class_members: int = 1, seed: int = 0) -> dict[str, dict]:
    """Zero-shot classification tasks over held-out molecules (same scaffold split as the data).

    - "chebi_class": candidates = ChEBI class texts ("<class name>. <definition>") of every
      class with at least `min_class_members` member in `split`; queries = the split's ChEBI
      molecules, labels = indices of all the classes each belongs to (multi-label).
    - "name": candidates = names of `num_name_candidates` molecules of the split; queries = those
      same molecules (SMILES), label = the index of the molecule's own name; every other name is
      a distractor.
    Each task: {"candidates": [str], "candidate_ids": [str], "queries": [{"smiles", "labels"}],
    "description": str}. Queries are capped at `max_queries` (deterministic order).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    mols = [(s, e) for s, e in _hash_order(chebi_molecules().items(), seed, "tasks") if split_of_smiles(s) == split]
    classes = _class_index()
    counts: dict[str, int] = {}
    for _, entry in mols:
        for c in entry["classes"]:
            counts[c] = counts.get(c, 0) + 1
    class_ids = sorted(c for c, n in counts.items() if n >= min_class_members)
    position = {c: i for i, c in enumerate(class_ids)}
    class_queries = [{"smiles": s, "name": e["name"], "labels": sorted(position[c] for c in e["classes"] if c in position)}
                     for s, e in mols]
    class_queries = [q for q in class_queries if q["labels"]][:max_queries]
    named = mols[:num_name_candidates]
    return {
        "chebi_class": {
            "description": f"Which ChEBI class does a held-out ({split}) molecule belong to? Multi-label.",
            "candidates": [f"{classes[c]['name']}. {classes[c]['definition']}" for c in class_ids],
            "candidate_ids": class_ids,
            "queries": class_queries,
        },
        "name": {
            "description": f"Pick a held-out ({split}) molecule's own name among {len(named)} names.",
            "candidates": [e["name"] for _, e in named],
            "candidate_ids": [s for s, _ in named],
            "queries": [{"smiles": s, "labels": [i]} for i, (s, _) in enumerate(named)][:max_queries],
        },
    }
