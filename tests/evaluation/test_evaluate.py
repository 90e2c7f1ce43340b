"""evaluate.py logic on real featurized records with oracle / collapsed embedders (the model
interface is `embed_records(tower, records)`), and the report files it writes."""
import json
import os

import numpy as np
import pytest

from molbind_data.featurize import conformer as conf_feat
from molbind_data.featurize import graph as graph_feat
from molbind_jax.evaluation import evaluate, metrics, report

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "ClCCl", "CCN(CC)CC", "OC(=O)CS",
          "CCO", "CCCC", "CC(C)O", "c1ccncc1"]


@pytest.fixture(scope="module")
def records():
    out = []
    for i, s in enumerate(SMILES):
        g = graph_feat.smiles_to_graph(s)
        n = len(g["graph_node_feat"])
        u = conf_feat.unimol_input(["C"] * n, np.random.default_rng(i).normal(size=(1, n, 3)).astype(np.float32))
        out.append({"id": f"r{i}", "smiles": s, "text": f"text about {s}",
                    "text_ids": np.arange(1, 5, dtype=np.int32), **g, **u})
    return out


class Oracle:
    """Embeds every modality of a record as the one-hot of its molecule: perfect retrieval."""

    def __init__(self, keys):
        self.index = {k: i for i, k in enumerate(dict.fromkeys(keys))}

    def embed_records(self, tower, recs):
        e = np.zeros((len(recs), len(self.index)), np.float32)
        for i, r in enumerate(recs):
            e[i, self.index[r["smiles"]]] = 1.0
        return e


class Collapsed:
    def embed_records(self, tower, recs):
        return np.ones((len(recs), 4), np.float32) / 2.0


def test_pair_targets_union_of_both_sides():
    t = evaluate.pair_targets(["m1", "m2", "m1", "m3"], ["t1", "t2", "t3", "t2"])
    assert [sorted(x for x in row if x >= 0) for row in t] == [[0, 2], [1, 3], [0, 2], [1, 3]]


def test_random_expected_matches_analytic():
    r = evaluate.random_expected(100, [1, 1, 1])
    assert r["R@20"] == pytest.approx(0.2) and r["n"] == 3
    mixed = evaluate.random_expected(10, [1, 2])
    assert mixed["R@1"] == pytest.approx((0.1 + 0.2) / 2)


def test_oracle_is_perfect_and_collapsed_is_worst(records):
    res, embs = evaluate.evaluate_pair(Oracle(SMILES), "graph_conformer", records, block_size=4)
    for d in ("a2b", "b2a"):
        assert res["full"][d]["R@1"] == 1.0 and res["full"][d]["MRR"] == 1.0
    assert res["mean_correct_per_query"] == pytest.approx(1.2)  # CCO appears twice
    assert set(res["baselines"]) == {"composition",
                                     "morgan_tanimoto (same SMILES both sides: upper bound)"}
    assert res["random"]["full"]["a2b"]["R@1"] < 0.2
    bad, _ = evaluate.evaluate_pair(Collapsed(), "graph_text", records, block_size=4)
    # ties count against the target: every non-target ties, so rank = n - #targets
    assert bad["full"]["a2b"]["R@1"] == 0.0 and bad["full"]["a2b"]["R@5"] == 0.0
    assert bad["in_batch"]["a2b"]["R@1"] == 0.0
    assert "smiles_text_tfidf" in bad["baselines"]


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_report_files(records, tmp_path):
    res, embs = evaluate.evaluate_pair(Oracle(SMILES), "graph_text", records, block_size=4)
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s, "loss/graph_text": 2.0 / s})
                             for s in range(1, 6)) + "\n{broken\n")
    plots = [report.plot_recall_curves({"graph_text": res}, str(tmp_path / "recall_curves.png")),
             report.plot_loss_curves(str(log), str(tmp_path / "loss_curves.png")),
             report.plot_embedding_map(embs, str(tmp_path / "embedding_map.png"))]
    cls = {"chebi_class": {"num_classes": 3,
                           "model": metrics.classification_metrics(np.eye(3), [[0], [1], [2]]),
                           "random": {"accuracy": 1 / 3, "top5": 1.0, "MRR": 0.6, "n": 3}}}
    path = report.write_report(str(tmp_path), {"retrieval": {"graph_text": res},
                                               "classification": cls}, plots)
    text = open(path).read()
    # Numbers with their bootstrap interval (perfect retrieval: a degenerate one).
    assert "| **graph→text** MolBind | 100.0 (100.0-100.0) |" in text
    assert "text→graph smiles_text_tfidf" in text and "random (expected)" in text
    assert "| **chebi_class** MolBind | 100.00 |" in text
    for p in plots:
        assert p and os.path.getsize(p) > 1000 and os.path.basename(p) in text
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["retrieval"]["graph_text"]["full"]["a2b"]["R@1"] == 1.0


def test_model_pairs_are_the_table_pairs_the_model_has_towers_for():
    from molbind_jax.models.molbind import MolBindConfig

    tiny = MolBindConfig.tiny()
    assert evaluate.model_pairs(tiny) == ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")
    assert evaluate.model_pairs(tiny.replace(modalities=("text", "graph"))) == ("graph_text",)
    assert evaluate.model_pairs(tiny.replace(modalities=("graph", "conformer", "pocket"))) == (
        "graph_conformer", "conformer_pocket")
    assert evaluate.model_pairs(tiny.replace(modalities=("text",))) == ()


class TargetOracle:
    """Ligand and pocket embedded as the one-hot of the pair's protein target."""

    def embed_records(self, tower, recs):
        names = sorted({r["target"] for r in recs})
        e = np.zeros((len(recs), len(names)), np.float32)
        for i, r in enumerate(recs):
            e[i, names.index(r["target"])] = 1.0
        return e


def test_conformer_pocket_gets_intervals_and_virtual_screening():
    from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY

    pocket = lambda n: np.array([1] + [POCKET_DICTIONARY.index("C")] * n + [2], np.int32)  # noqa: E731
    lig = lambda n: np.array([1] + [MOL_DICTIONARY.index("C")] * n + [2], np.int32)  # noqa: E731
    targets = ["A"] * 3 + ["B"] * 2 + ["C"] * 3
    recs = [{"id": f"p{i}", "smiles": f"C{'C' * i}", "target": t, "conformer_tokens": lig(3 + i),
             "pocket_tokens": pocket(20 + 5 * i)} for i, t in enumerate(targets)]
    res, _ = evaluate.evaluate_pair(TargetOracle(), "conformer_pocket", recs, block_size=4)
    for scope in ("full", "in_batch", "strict"):
        s = res[scope]["a2b"]
        assert s["ci95"]["R@1"][0] <= s["R@1"] <= s["ci95"]["R@1"][1]
    sc = res["screening"]
    # Each pocket scores its target's ligands 1 and every other ligand 0: perfect screens.
    assert sc["model"]["AUROC"] == 1.0 and sc["model"]["n"] == 3
    assert sc["model"]["ci95"]["AUROC"] == [1.0, 1.0]
    # EF5% of 8 ligands = top 1: always an active, (1/1) / (A/8).
    assert sc["model"]["EF5%"] == pytest.approx(np.mean([8 / 3, 8 / 2, 8 / 3]))
    assert set(sc["baselines"]) == set(res["baselines"]) == {"size", "composition"}
    assert sc["random"]["AUROC"] == 0.5
    text = report.screening_table({"conformer_pocket": res})
    assert "| **conformer_pocket** MolBind | 100.0 (100.0-100.0) |" in text
    assert "conformer_pocket random (expected) | 50.00 |" in text
