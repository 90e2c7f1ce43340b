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
    assert "| **graph→text** MolBind | 100.00 |" in text
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
