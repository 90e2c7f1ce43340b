"""The leakage audit (molbind_data.leakage): a hand-made dataset with planted leaks, each of
which the audit must find, and nothing else."""
import json

import pytest

from molbind_data.leakage import audit as audit_mod
from molbind_data.leakage.audit import audit, normalize_text

# Train molecules: benzene rings, a pyridine, an acyclic one. The planted leaks:
#  1. graph_conformer's test holds phenol, which is in graph_text's *train* (another pair type);
#  2. graph_text's test holds ethylbenzene: a new molecule on a train scaffold (benzene);
#  3. graph_text's train repeats a text (case and spaces differ), and one test text is a train text
#     of conformer_text;
#  4. conformer_pocket's test has a ligand of protein "bace", which is in its train split.
RECORDS = {
    "graph_text": {
        "train": [{"smiles": "Oc1ccccc1", "text": "Phenol is an aromatic alcohol."},
                  {"smiles": "c1ccncc1", "text": "Pyridine  is a base."},
                  {"smiles": "CCCCCC", "text": "pyridine is a BASE. "},        # duplicate text
                  {"smiles": "", "text": "no molecule here"},                     # no molecule
                  {"smiles": "C1CC1(", "text": "broken"}],                        # unparsable
        "validation": [{"smiles": "C1CCC2CCCCC2C1", "text": "Decalin."}],
        "test": [{"smiles": "CCc1ccccc1", "text": "Ethylbenzene."},               # train scaffold
                 {"smiles": "O=C1CCCCC1", "text": "  Caffeine is a STIMULANT."},  # text in train
                 {"smiles": "CCCCCCCCO", "text": "Octanol."}],
    },
    "conformer_text": {
        "train": [{"smiles": "CN1C=NC2=C1C(=O)N(C)C(=O)N2C", "text": "Caffeine is a stimulant."}],
        "test": [{"smiles": "CC(C)O", "text": "Isopropanol."}],
    },
    "graph_conformer": {
        "train": [{"smiles": "CCN"}],
        "test": [{"smiles": "c1ccc(O)cc1"}, {"smiles": "C1CCOC1"}],  # phenol (other pair's train)
    },
    "conformer_pocket": {
        "train": [{"smiles": "CC(=O)NC1CCOCC1", "target": "bace"},
                  {"smiles": "CC(=O)Nc1ccsc1", "target": "jnk1"}],
        "validation": [{"smiles": "NC(=O)C1CC1", "target": "cdk2"}],
        "test": [{"smiles": "CC(=O)NC1CCNC1", "target": "bace"},                # protein in train
                 {"smiles": "CC(=O)NC1CCCC1", "target": "ptp1b"}],
    },
}


@pytest.fixture(scope="module")
def sections():
    return audit(RECORDS)


def test_molecules_in_any_train_split_are_found(sections):
    gc = sections["graph_conformer"]["molecules"]["test"]
    assert (gc["distinct"], gc["in_train"], gc["by_pair"], gc["examples"]) == (2, 1, {"graph_text": 1}, ["Oc1ccccc1"])
    for pair in ("graph_text", "conformer_text", "conformer_pocket"):
        for split, m in sections[pair]["molecules"].items():
            assert m["in_train"] == 0 and m["in_train_ignoring_stereo"] == 0, (pair, split)
    assert sections["graph_text"]["records"]["train"] == {
        "records": 5, "no_molecule": 1, "unparsable": 1, "distinct": 3}


def test_scaffolds(sections):
    gt = sections["graph_text"]["scaffolds"]["test"]
    # ethylbenzene -> benzene (in train via phenol); cyclohexanone -> cyclohexane (new); octanol acyclic
    assert (gt["distinct"], gt["in_train"], gt["examples"], gt["acyclic_molecules"]) == (2, 1, ["c1ccccc1"], 1)
    assert gt["molecules_with_train_scaffold"] == 1 and gt["by_pair"] == {"graph_text": 1}
    gc = sections["graph_conformer"]["scaffolds"]["test"]  # phenol's benzene, THF is new
    assert (gc["in_train"], gc["examples"]) == (1, ["c1ccccc1"])
    for pair in ("conformer_text", "conformer_pocket"):
        for split, sc in sections[pair]["scaffolds"].items():
            assert sc["in_train"] == 0 and sc["molecules_with_train_scaffold"] == 0, (pair, split)
    assert sections["graph_text"]["scaffolds"]["validation"]["in_train"] == 0
    assert sections["conformer_text"]["scaffolds"]["test"] == {
        "distinct": 0, "in_train": 0, "by_pair": {}, "examples": [], "molecules_with_train_scaffold": 0,
        "acyclic_molecules": 1}


def test_texts(sections):
    texts = sections["graph_text"]["texts"]
    dup = texts["train_duplicates"]
    assert (dup["records"], dup["distinct"], dup["repeated_texts"], dup["records_with_repeated_text"]) == (5, 4, 1, 2)
    assert dup["examples"] == [{"text": "pyridine is a base.", "count": 2}]
    assert texts["test"]["in_train"] == 1 and texts["test"]["by_pair"] == {"conformer_text": 1}
    assert texts["test"]["examples"] == ["caffeine is a stimulant."]
    assert texts["validation"]["in_train"] == 0
    assert sections["conformer_text"]["texts"]["test"]["in_train"] == 0
    assert "texts" not in sections["graph_conformer"] and "targets" not in sections["graph_text"]


def test_targets(sections):
    t = sections["conformer_pocket"]["targets"]
    assert t["train"] == {"distinct": 2}
    assert t["test"] == {"distinct": 2, "in_train": 1, "records_with_train_target": 1, "shared": ["bace"]}
    assert t["validation"]["in_train"] == 0


def test_nearest_neighbours(sections):
    nn = sections["graph_conformer"]["nearest_neighbour"]["test"]
    assert (nn["queries"], nn["queries_used"], nn["references"]) == (2, 2, 7)
    assert nn["max"] == 1.0 and nn["eq_1_0"] == 1 and nn["ge_0_9"] == 1 and nn["median"] < 1.0
    nn = sections["graph_text"]["nearest_neighbour"]["test"]
    assert nn["eq_1_0"] == 0 and 0 < nn["mean"] < nn["max"] < 1.0
    # sub-sampled with a fixed seed: the sample size is stated, the result repeats
    small = audit(RECORDS, max_queries=1, max_references=3, seed=3)["graph_conformer"]["nearest_neighbour"]["test"]
    assert (small["queries"], small["queries_used"], small["references_used"], small["seed"]) == (2, 1, 3, 3)
    assert small == audit(RECORDS, max_queries=1, max_references=3, seed=3)["graph_conformer"][
        "nearest_neighbour"]["test"]


def test_a_clean_dataset_reports_no_leak_and_the_summary_prints():
    clean = {"graph_text": {"train": [{"smiles": "c1ccccc1", "text": "Benzene."}],
                            "test": [{"smiles": "C1CCNCC1", "text": "Piperidine."}]}}
    sec = audit(clean)["graph_text"]
    assert sec["molecules"]["test"]["in_train"] == 0 and sec["scaffolds"]["test"]["in_train"] == 0
    assert sec["texts"]["test"]["in_train"] == 0 and sec["nearest_neighbour"]["test"]["max"] < 0.5
    json.dumps(sec)  # a JSON section
    lines = audit_mod.summary_lines(audit(RECORDS))
    assert any("graph_conformer: test molecules in train 1/2" in line for line in lines), lines
    assert any("targets (proteins) also in train: validation 0/1; test 1/2" in line for line in lines), lines


def test_bytes_and_odd_values():
    assert normalize_text(b"  A\tB\n c ") == "a b c" and normalize_text(None) == ""
    sec = audit({"graph_text": {"train": [{"smiles": b"CCO", "text": b"x"}], "test": [{"smiles": "[Xe"}]}})
    assert sec["graph_text"]["records"]["test"]["unparsable"] == 1 and "nearest_neighbour" not in sec["graph_text"]


def test_the_command_names_a_data_dir_without_the_dataset(tmp_path):
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(repo, ".pyshim"), repo,
                                                         os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "molbind_data.leakage", f"--data_dir={tmp_path}"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: no built pair type of molbind_mini in data_dir {tmp_path}"


def test_a_stereoisomer_is_told_apart_from_the_same_molecule():
    sec = audit({"graph_text": {"train": [{"smiles": "C[C@H](N)C(=O)O"}], "test": [{"smiles": "C[C@@H](N)C(=O)O"}]}})
    m, nn = sec["graph_text"]["molecules"]["test"], sec["graph_text"]["nearest_neighbour"]["test"]
    assert (m["in_train"], m["in_train_ignoring_stereo"], nn["eq_1_0"]) == (0, 1, 1)


def test_a_failing_audit_leaves_the_build_alone(tmp_path, monkeypatch, capsys):
    from molbind_data import build
    from molbind_data.leakage import built

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(built, "audit_dataset", broken)
    assert build.audit_leakage("molbind_mini", str(tmp_path)) == {}
    err = capsys.readouterr().err
    assert "warning: the leakage audit of molbind_mini" in err and "RuntimeError: boom" in err
    assert "python -m molbind_data.leakage --dataset=molbind_mini" in err
