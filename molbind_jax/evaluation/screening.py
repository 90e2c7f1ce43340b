"""Virtual-screening metrics for conformer<->pocket: can a pocket pick its ligands out of
the test ligands?

Protocol (`screen`):

* **Unit**: every test pocket row is one screen. It ranks *all* test ligand rows (the
  conformer side of every conformer_pocket test pair) by similarity to the pocket.
* **Actives** of a pocket: the ligand rows whose molecule (canonical SMILES identity) is
  paired with the pocket's protein target (`target` identity) anywhere in the test split,
  its own cognate ligand included; **decoys**: every other test ligand row. So the decoys
  are real ligands of other proteins, not property-matched decoys as in DUD-E.
* **Per target**: the several pockets of one protein (one per co-crystallised ligand) are
  averaged into one value per target, so a protein with many pockets weighs as much as a
  protein with one. Reported numbers are means over targets; their 95% intervals are a
  percentile bootstrap over the *targets* (metrics.bootstrap_ci), which with a handful of
  test proteins is wide and coarse.
* A target with no decoy (all test ligands are its actives) or no active is skipped, with
  its reason in `skipped`.
* **AUROC**: probability that an active scores above a decoy, ties counted one half
  (Mann-Whitney).
* **EF at x%**: with N ligands and A actives, the top n = max(1, ceil(x·N / 100)) ligands
  are kept; EF = (actives among them / n) / (A / N), i.e. the hit rate of the top x%
  over the hit rate of the whole list (= actives in the top x% / (x% of A) when x·N/100
  is whole). Its maximum is min(N / n, N / A) (e.g. N / A when the actives fill the top).
* **Ties** (AUROC and EF) are scored as the expectation over a random order of the tied
  ligands: a collapsed model scores exactly the random value (AUROC 0.5, EF 1), neither a
  lucky top hit nor below random. (The retrieval metrics count ties against the target
  instead; a rank has no "expected" value to report per query.) NaN scores rank last.
* The random scorer's expectation is AUROC 0.5, EF 1 for every target.
"""
from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np

from molbind_jax.evaluation import metrics

EF_PERCENTS = (1, 5)
METRICS = ("AUROC",) + tuple(f"EF{p}%" for p in EF_PERCENTS)


def _clean(scores) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    return np.where(np.isnan(s), -np.inf, s)


def auroc(scores, actives) -> float:
    """P(score of an active > score of a decoy), ties one half; needs >= 1 of each."""
    from scipy.stats import rankdata

    s, act = _clean(scores), np.asarray(actives, bool)
    n_act, n_dec = int(act.sum()), int((~act).sum())
    if not n_act or not n_dec:
        raise ValueError(f"AUROC needs actives and decoys (got {n_act} and {n_dec})")
    ranks = rankdata(s)  # average ranks of ties, 1-based; -inf ties among themselves
    return float((ranks[act].sum() - n_act * (n_act + 1) / 2) / (n_act * n_dec))


def top_count(n: int, percent: float) -> int:
    """Ligands kept in the top `percent`% of n: ceil(percent·n / 100), at least 1."""
    return max(1, int(np.ceil(round(percent * n / 100.0, 9))))


def enrichment_factor(scores, actives, percent: float) -> float:
    """(hit rate among the top `top_count` ligands) / (hit rate of the whole list); tied
    ligands at the cut-off share the remaining places in proportion (expected value over
    random tie orders)."""
    s, act = _clean(scores), np.asarray(actives, bool)
    n, n_act = s.size, int(act.sum())
    if not n_act:
        raise ValueError("EF needs at least one active")
    k = top_count(n, percent)
    cut = np.sort(s)[::-1][k - 1]
    above, at = s > cut, s == cut
    hits = act[above].sum() + (k - above.sum()) * act[at].sum() / at.sum()
    return float((hits / k) / (n_act / n))


def screen_scores(scores, actives) -> dict[str, float]:
    """{AUROC, EF1%, EF5%} of one screen (one pocket's scores of every ligand)."""
    out = {"AUROC": auroc(scores, actives)}
    out.update({f"EF{p}%": enrichment_factor(scores, actives, p) for p in EF_PERCENTS})
    return out


def actives_by_target(ligand_keys: Sequence, target_keys: Sequence) -> dict:
    """{target: bool [N] over the ligand rows}: a row is active for a target when its
    molecule is paired with that target in some row."""
    mols = collections.defaultdict(set)
    for lig, tgt in zip(ligand_keys, target_keys):
        mols[tgt].add(lig)
    return {t: np.array([lig in m for lig in ligand_keys], bool) for t, m in mols.items()}


def screen(sim_pl, ligand_keys: Sequence, target_keys: Sequence, *, ci: bool = True) -> dict:
    """The protocol of the module docstring on ``sim_pl`` [pockets, ligands]: row i is test
    pair i's pocket, column j test pair j's ligand; keys are the rows' identities.

    Returns {"AUROC", "EF1%", "EF5%" (means over targets), "n" (targets used), "ci95",
    "per_target": {target: {metrics, pockets, actives}}, "skipped": {target: reason}}."""
    sim = np.asarray(sim_pl, np.float64)
    n = len(ligand_keys)
    if sim.shape != (n, n) or len(target_keys) != n:
        raise ValueError(f"sim_pl must be [N, N] over the N={n} test pairs, got {sim.shape}")
    actives = actives_by_target(ligand_keys, target_keys)
    rows = collections.defaultdict(list)
    for i, t in enumerate(target_keys):
        rows[t].append(i)
    per_target, skipped = {}, {}
    for t in sorted(rows, key=str):
        act = actives[t]
        if act.all():
            skipped[str(t)] = f"no decoy: all {n} test ligands are actives of this target"
            continue
        if not act.any():
            skipped[str(t)] = "no active"
            continue
        pockets = [screen_scores(sim[i], act) for i in rows[t]]
        per_target[str(t)] = {m: float(np.mean([p[m] for p in pockets])) for m in METRICS}
        per_target[str(t)].update(pockets=len(rows[t]), actives=int(act.sum()))
    out: dict = {"n": len(per_target), "ligands": n}
    if per_target:
        values = {m: np.array([v[m] for v in per_target.values()]) for m in METRICS}
        out.update({m: float(v.mean()) for m, v in values.items()})
        if ci:
            out["ci95"] = metrics.intervals(values)
    out.update(per_target=per_target, skipped=skipped)
    return out


def random_expected(n_targets: int) -> dict:
    """The random scorer: AUROC 0.5 and EF 1 on every target (exact expectations)."""
    return dict({"AUROC": 0.5}, **{f"EF{p}%": 1.0 for p in EF_PERCENTS}, n=int(n_targets))


def screening_section(sim_pl, ligand_keys: Sequence, target_keys: Sequence,
                      baseline_sims: Mapping[str, np.ndarray] = ()) -> dict:
    """The metrics.json entry: the model, each baseline ([ligand, pocket] matrices as
    baselines.pair_baselines gives them, transposed here) and the random expectation."""
    model = screen(sim_pl, ligand_keys, target_keys)
    return {
        "unit": "each test pocket ranks every test ligand; actives: the ligands paired with "
                "its target; mean over the pockets of a target, then over targets",
        "model": model,
        "baselines": {name: screen(np.asarray(s).T, ligand_keys, target_keys)
                      for name, s in dict(baseline_sims).items()},
        "random": random_expected(model["n"]),
    }
