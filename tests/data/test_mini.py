"""molbind_mini source: parsing of the packaged data, split rules, caps, zero-shot tasks."""
import pytest

from molbind_data.sources import mini

MESSAGE = """
Attempt failed: F1 score of 0.5 is too low.
Outcomes:
------

True positives: SMILES: CCO NAME: ethanol REASON: CORRECT has OH
 * SMILES: CCCO NAME: propan-1-ol REASON: CORRECT has OH
False positives: SMILES: CC=O NAME: acetaldehyde REASON: WRONGLY CLASSIFIED has O
 * SMILES: CC(C)=O NAME: acetone REASON: WRONGLY CLASSIFIED has O
False negatives: SMILES: OCCO NAME: ethylene glycol REASON: MISSED two OH
------
"""


def test_members_are_true_positives_and_false_negatives_only():
    members = mini._members_from_message(MESSAGE)
    assert members == [("CCO", "ethanol"), ("CCCO", "propan-1-ol"), ("OCCO", "ethylene glycol")]


def test_scaffold_split_is_deterministic_and_shared_by_scaffold():
    # Same Murcko scaffold (benzene) -> same split, whatever the substituents.
    phenyls = ["c1ccccc1O", "c1ccccc1N", "Cc1ccccc1CCC(=O)O"]
    assert len({mini.scaffold_of(s) for s in phenyls}) == 1
    assert len({mini.split_of_smiles(s) for s in phenyls}) == 1
    assert mini.split_of_smiles("CCCCO") == mini.split_of_smiles("CCCCO")
    # Acyclic molecules fall back to themselves, so they spread over all splits.
    acyclic = ["C" * n + "O" for n in range(1, 80)]
    assert {mini.split_of_smiles(s) for s in acyclic} == {"train", "validation", "test"}


def test_take_per_split_quotas():
    items = [(str(i), {"s": ["train", "validation", "test"][i % 3]}) for i in range(60)]
    taken = mini.take_per_split(iter(items), 10, lambda k, r: r["s"])
    counts = {s: sum(r["s"] == s for _, r in taken) for s in ("train", "validation", "test")}
    assert counts == {"train": 8, "validation": 1, "test": 1}
    assert mini.take_per_split(iter(items), None, lambda k, r: r["s"]) == tuple(items)


def test_max_records_option():
    assert mini.max_records("graph_conformer", mini.resolve_options({})) == mini.DEFAULT_MAX_RECORDS["graph_conformer"]
    assert mini.max_records("graph_text", {"max_records": 7}) == 7
    assert mini.max_records("graph_text", {"max_records": {"graph_text": 3}}) == 3


def test_pocket_targets_are_held_out_whole():
    records = {s: list(mini.raw_records("conformer_pocket", s, {"pocket_split": "target"})) for s in mini.SPLITS}
    targets = {s: {r["split_group"] for _, r in recs} for s, recs in records.items()}
    assert targets["validation"] == {"cdk2"} and targets["test"] == {"ptp1b", "posebusters"}
    assert not targets["train"] & (targets["validation"] | targets["test"])
    assert sum(len(v) for v in records.values()) > 190  # ~199 perses ligands + 4 crystal ligands
    assert len(targets["train"]) == 6


def test_pocket_ligands_split_by_scaffold_by_default():
    records = {s: list(mini.raw_records("conformer_pocket", s, {})) for s in mini.SPLITS}
    assert sum(len(v) for v in records.values()) > 190
    scaffolds = {s: {mini.scaffold_of(r["ligand_smiles"]) for _, r in recs if r["split_group"] != "posebusters"}
                 for s, recs in records.items()}
    assert not scaffolds["train"] & (scaffolds["validation"] | scaffolds["test"])
    assert not scaffolds["validation"] & scaffolds["test"]
    groups = {s: {r["split_group"] for _, r in recs} for s, recs in records.items()}
    assert "posebusters" in groups["test"] and "posebusters" not in groups["train"] | groups["validation"]
    # Held-out ligands of proteins seen in training: the test split is not one protein.
    assert len(groups["test"] & groups["train"]) >= 3
    assert all(mini.split_of_smiles(r["ligand_smiles"]) == s for s, recs in records.items()
               for _, r in recs if r["split_group"] != "posebusters")
    with pytest.raises(ValueError, match="pocket_split"):
        list(mini.raw_records("conformer_pocket", "train", {"pocket_split": "random"}))


@pytest.mark.slow
def test_chebi_text_recipe_and_disjoint_molecule_splits():
    recs = {s: list(mini.raw_records("graph_text", s, {"max_records": 300})) for s in mini.SPLITS}
    smiles = {s: {r["smiles"] for _, r in v} for s, v in recs.items()}
    assert not smiles["train"] & smiles["test"] and not smiles["train"] & smiles["validation"]
    scaffolds = {s: {mini.scaffold_of(x) for x in v} for s, v in smiles.items()}
    assert not scaffolds["train"] & scaffolds["test"]
    key, raw = recs["train"][0]
    assert key.startswith("mini/graph_text/chebi/") and len(key.split("/")[-1]) == 16 and f"{raw['name']} is a" in raw["text"]
    classes = mini._class_index()
    mol = mini.chebi_molecules()[raw["smiles"]]
    assert any(classes[c]["definition"] in raw["text"] for c in mol["classes"])


@pytest.mark.slow
def test_classification_tasks_use_only_held_out_molecules():
    tasks = mini.classification_tasks("test", max_queries=100, num_name_candidates=50, iupac=False)
    assert set(tasks) == {"chebi_class", "name"}
    # Every ChEBI molecule of train (5560) fits this cap; the IUPAC task is tested in test_mini_pubchem.py.
    train = {r["smiles"] for _, r in mini.raw_records("graph_text", "train", {"max_records": {"graph_text": 7000}})}
    for name, task in tasks.items():
        assert len(task["candidates"]) == len(task["candidate_ids"]) > 1
        assert task["queries"]
        for q in task["queries"]:
            assert q["smiles"] not in train and mini.split_of_smiles(q["smiles"]) == "test"
            assert q["labels"] and all(0 <= i < len(task["candidates"]) for i in q["labels"])
    cls = tasks["chebi_class"]
    mols = mini.chebi_molecules()
    q = cls["queries"][0]
    assert {cls["candidate_ids"][i] for i in q["labels"]} <= set(mols[q["smiles"]]["classes"])
    name = tasks["name"]
    assert all(name["candidates"][q["labels"][0]] == mols[q["smiles"]]["name"] for q in name["queries"])


@pytest.mark.slow
def test_featurize_each_pair_type_on_real_records():
    from molbind_data.molbind_pairs.builder import features_for

    opts = {"max_records": 6}
    for pair in mini.PROVIDES:
        key, raw = next(iter(mini.raw_records(pair, "train", opts)))
        example = mini.featurize(pair, raw, opts)
        assert set(example) | {"id"} == set(features_for(pair).keys()), pair
        if "conformer_tokens" in example:
            tokens = example["conformer_tokens"]
            assert tokens[0] == 1 and tokens[-1] == 2
            assert example["conformer_coords"].shape[1:] == (len(tokens), 3)


def test_qm9_geometry_parses_bare_floats_and_mathematica_exponents_and_skips_bad_rows():
    from molbind_data.featurize import SkipRecord

    atoms, coords = mini.qm9_geometry("['C','H']", "[[0.,1.5*^-6,0.0],[1.0,0.,1.]]")
    assert atoms == ["C", "H"] and coords.shape == (1, 2, 3) and abs(coords[0, 0, 1] - 1.5e-6) < 1e-12
    with pytest.raises(SkipRecord, match="unreadable_file"):
        mini.qm9_geometry("['C','H']", "[[0.0,1.0,0.0]]")
    with pytest.raises(SkipRecord, match="unreadable_file"):
        mini.qm9_geometry("['C']", "[[0.0,1.0")
