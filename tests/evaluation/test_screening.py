"""Virtual-screening metrics (screening.py) on hand-made rankings with known values:
perfect, inverted, tied, ties at the EF cut-off, per-target averaging and skipped targets."""
import itertools

import numpy as np
import pytest

from molbind_jax.evaluation import screening


def test_auroc_perfect_inverted_tied_and_hand_counted():
    act = np.array([True, True, False, False, False])
    assert screening.auroc([5, 4, 3, 2, 1], act) == 1.0
    assert screening.auroc([1, 2, 3, 4, 5], act) == 0.0
    assert screening.auroc(np.zeros(5), act) == 0.5
    # Pairs (active, decoy): 3>2, 3>0, 1<2, 1>0 -> 3 of 4.
    assert screening.auroc([3, 2, 1, 0], [True, False, True, False]) == 0.75
    # One tie counts one half: (0.5 + 1) / 2.
    assert screening.auroc([1, 1, 0], [True, False, False]) == 0.75
    # NaN scores rank last.
    assert screening.auroc([np.nan, 1.0, 0.0], [True, False, False]) == 0.0
    with pytest.raises(ValueError, match="actives and decoys"):
        screening.auroc([1, 2], [True, True])


def test_auroc_equals_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=30).astype(float)  # many ties
    act = rng.random(30) < 0.3
    pairs = [(a, d) for a, d in itertools.product(s[act], s[~act])]
    want = np.mean([1.0 if a > d else 0.5 if a == d else 0.0 for a, d in pairs])
    assert screening.auroc(s, act) == pytest.approx(want)


def test_top_count_rounds_up_to_at_least_one():
    assert screening.top_count(25, 1) == 1
    assert screening.top_count(100, 5) == 5
    assert screening.top_count(101, 5) == 6
    assert screening.top_count(300, 1) == 3
    assert screening.top_count(1, 5) == 1


def test_enrichment_perfect_inverted_and_random():
    n, a = 100, 5
    act = np.zeros(n, bool)
    act[:a] = True
    best = -np.arange(n, dtype=float)  # row 0 on top
    assert screening.enrichment_factor(best, act, 1) == pytest.approx(20.0)  # (1/1)/(5/100)
    assert screening.enrichment_factor(best, act, 5) == pytest.approx(20.0)  # (5/5)/(5/100)
    assert screening.enrichment_factor(-best, act, 5) == 0.0
    # Everything tied: the expected value over random orders is exactly 1.
    for p in (1, 5):
        assert screening.enrichment_factor(np.zeros(n), act, p) == pytest.approx(1.0)
    # 3 of the 5 actives in the top 5: (3/5) / (5/100) = 12.
    s = best.copy()
    s[[3, 4]] = -50
    assert screening.enrichment_factor(s, act, 5) == pytest.approx(12.0)


def test_enrichment_ties_at_the_cut_off_share_the_places():
    # 20 ligands, top 1 place (1% and 5% both give 1); two tied on top: one active, one
    # decoy -> half an active expected in the top place: EF = 0.5 / (2/20) = 5.
    s = np.arange(20, dtype=float)
    s[18] = s[19]
    act = np.zeros(20, bool)
    act[[19, 0]] = True
    assert screening.enrichment_factor(s, act, 5) == pytest.approx(5.0)
    s[17] = s[19]  # three tied for one place, one of them active: 1/3 expected
    assert screening.enrichment_factor(s, act, 5) == pytest.approx((1 / 3) / (2 / 20))


def test_screen_averages_pockets_within_a_target_then_targets():
    # Ligand rows: 0,1 bind target A; 2 binds B; 3 binds C. Pocket rows are the same pairs.
    ligs = ["l0", "l1", "l2", "l3"]
    tgts = ["A", "A", "B", "C"]
    sim = np.array([[4, 3, 2, 1],     # pocket A#0: actives l0,l1 on top -> AUROC 1
                    [1, 2, 4, 3],     # pocket A#1: actives at the bottom -> AUROC 0
                    [1, 2, 4, 3],     # pocket B: l2 on top -> AUROC 1
                    [4, 3, 2, 1]], float)  # pocket C: l3 last -> AUROC 0
    out = screening.screen(sim, ligs, tgts)
    assert out["per_target"]["A"]["AUROC"] == 0.5 and out["per_target"]["A"]["pockets"] == 2
    assert out["per_target"]["B"]["AUROC"] == 1.0 and out["per_target"]["C"]["AUROC"] == 0.0
    assert out["AUROC"] == pytest.approx(0.5)  # mean over 3 targets, not over 4 pockets
    assert out["n"] == 3 and out["skipped"] == {}
    lo, hi = out["ci95"]["AUROC"]
    assert lo <= out["AUROC"] <= hi and hi - lo > 0
    # EF1% with 4 ligands = top 1 ligand: A#0 hit (1/1)/(2/4)=2, A#1 miss 0 -> A: 1; B: 4; C: 0.
    assert out["per_target"]["A"]["EF1%"] == pytest.approx(1.0)
    assert out["EF1%"] == pytest.approx((1 + 4 + 0) / 3)


def test_screen_molecule_identity_and_skipped_targets():
    # The same molecule m bound to A and B is an active of both (rows 0 and 2).
    act = screening.actives_by_target(["m", "x", "m", "y"], ["A", "A", "B", "B"])
    assert act["A"].tolist() == [True, True, True, False]
    assert act["B"].tolist() == [True, False, True, True]
    # One target holding every ligand: no decoy, skipped with the reason.
    out = screening.screen(np.eye(3), ["a", "b", "c"], ["T", "T", "T"])
    assert out["n"] == 0 and "AUROC" not in out
    assert "no decoy" in out["skipped"]["T"]
    with pytest.raises(ValueError, match="N=3"):
        screening.screen(np.eye(2), ["a", "b", "c"], ["T", "U", "V"])


def test_section_has_model_baselines_and_random():
    rng = np.random.default_rng(1)
    ligs = [f"l{i}" for i in range(12)]
    tgts = ["A"] * 4 + ["B"] * 4 + ["C"] * 4
    emb = rng.normal(size=(12, 4))
    base = rng.normal(size=(12, 12))  # [ligand, pocket] as baselines give it
    sec = screening.screening_section(emb @ emb.T, ligs, tgts, {"size": base})
    assert sec["random"] == {"AUROC": 0.5, "EF1%": 1.0, "EF5%": 1.0, "n": 3}
    want = screening.screen(base.T, ligs, tgts)
    assert sec["baselines"]["size"]["AUROC"] == want["AUROC"]
