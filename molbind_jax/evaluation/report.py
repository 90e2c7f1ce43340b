"""The evaluation report: markdown tables, metrics.json and PNG plots.

Input is the results dict built by `evaluate.py` (also written verbatim to metrics.json):

    {"model": {...}, "retrieval": {pair: {"a": "graph", "b": "text", "n": N,
        "in_batch": {"a2b": summary, "b2a": summary}, "full": {...},
        "curve": {"a2b": [R@1..R@K], "b2a": [...]},
        "baselines": {name: {"a2b": summary, "b2a": summary}},
        "random": {"in_batch": {"a2b": ..}, "full": {"a2b": ..}}}},
     "emergent": {pair: same layout as retrieval, optional},
     "classification": {task: {"model": {...}, "baselines": {name: {...}}, "random": {...}}},
     "original": {pair: {"a", "b", "n", "in_batch": orig, "full": orig}},   (protocol original/both)
     "original_settings": {...},
     "ladder": {pair: {"a", "b", "n", "rungs": [{"name", "change", "in_batch": orig,
                                                 "full": orig}]}},          (protocol both)
     "probes": {...} (probes.run_probes, optional),
     "skipped": {...}}

where a summary is metrics.summarize's dict (fractions; with "ci95": {metric: [lo, hi]}, the
bootstrap interval, shown as "12.3 (10.1-14.5)"), the conformer_pocket entry also has
"screening" (screening.screening_section) and `orig` the original protocol's
dict (percentages: a2b_acc, a2b_rec20, b2a_acc, b2a_rec20, n; see original_protocol).
Tables show percentages.
Also the non-finite checks: `check_finite` (embeddings of a pair, before any metric) and
`write_report` refuse NaN / infinite values with a clear error.
Matplotlib runs headless (Agg); nothing here touches JAX.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from molbind_jax.cli import InputError

KS = (1, 5, 10, 20)


def _arrow(pair_res: Mapping, direction: str) -> str:
    a, b = pair_res["a"], pair_res["b"]
    return f"{a}→{b}" if direction == "a2b" else f"{b}→{a}"


def cell(s: Mapping, key: str, scale: float = 100.0) -> str:
    """One number of a summary: "12.34" without an interval, "12.3 (10.1-14.5)" with its
    bootstrap interval (summary["ci95"][key], metrics.bootstrap_ci)."""
    ci = (s.get("ci95") or {}).get(key)
    if ci is None:
        return f"{scale * s[key]:.2f}"
    return f"{scale * s[key]:.1f} ({scale * ci[0]:.1f}-{scale * ci[1]:.1f})"


def _row(name: str, s: Mapping | None) -> str:
    if not s:
        return f"| {name} |" + " – |" * (len(KS) + 2)
    vals = [cell(s, f"R@{k}") for k in KS] + [cell(s, "MRR")]
    return f"| {name} | " + " | ".join(vals) + f" | {s.get('n') or ''} |"


def retrieval_table(retrieval: Mapping, scope: str = "full", with_baselines: bool = True
                    ) -> str:
    """Markdown table: one line per pair direction (model), plus baselines and random."""
    head = ["| " + " | ".join(["direction / scorer"] + [f"R@{k}" for k in KS] + ["MRR", "n"])
            + " |", "|" + "---|" * (len(KS) + 3)]
    lines = list(head)
    for pair, res in retrieval.items():
        for d in ("a2b", "b2a"):
            arrow = _arrow(res, d)
            lines.append(_row(f"**{arrow}** MolBind", res[scope][d]))
            if not with_baselines:
                continue
            for name, b in res.get("baselines", {}).items():
                scope_b = b.get(scope)
                if scope_b:
                    lines.append(_row(f"{arrow} {name}", scope_b.get(d)))
            rnd = res.get("random", {}).get(scope, {}).get(d)
            if rnd:
                lines.append(_row(f"{arrow} random (expected)", rnd))
    return "\n".join(lines)


def classification_table(classification: Mapping) -> str:
    lines = ["| task / scorer | accuracy | top-5 | MRR | queries | classes |",
             "|---|---|---|---|---|---|"]
    for task, res in classification.items():
        def fmt(name, s):
            return (f"| {name} | {cell(s, 'accuracy')} | {cell(s, 'top5')} | "
                    f"{cell(s, 'MRR')} | {s.get('n', '')} | {res.get('num_classes', '')} |")
        lines.append(fmt(f"**{task}** MolBind", res["model"]))
        for name, s in res.get("baselines", {}).items():
            lines.append(fmt(f"{task} {name}", s))
        if res.get("random"):
            lines.append(fmt(f"{task} random (expected)", res["random"]))
    return "\n".join(lines)


def screening_table(retrieval: Mapping) -> str:
    """Virtual screening (screening.py) of every pair that has it: AUROC (%), EF1%, EF5%
    (means over targets, bootstrap interval over targets), targets used, skipped."""
    lines = ["| pair / scorer | AUROC | EF1% | EF5% | targets | skipped targets |",
             "|---|---|---|---|---|---|"]
    for pair, res in retrieval.items():
        sc = res.get("screening")
        if not sc:
            continue
        rows = [(f"**{pair}** MolBind", sc["model"])]
        rows += [(f"{pair} {name}", b) for name, b in sc.get("baselines", {}).items()]
        rows += [(f"{pair} random (expected)", sc["random"])]
        for name, s in rows:
            if "AUROC" not in s:
                lines.append(f"| {name} | – | – | – | 0 | {len(s.get('skipped', {}))} |")
                continue
            vals = [cell(s, "AUROC")] + [cell(s, k, 1.0) for k in ("EF1%", "EF5%")]
            lines.append(f"| {name} | " + " | ".join(vals)
                         + f" | {s.get('n', '')} | {len(s.get('skipped', {}))} |")
    return "\n".join(lines)


def _pct(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def original_table(original: Mapping) -> str:
    """The original protocol's numbers: Acc (= R@1) and R@20, in-batch and full set."""
    lines = ["| direction | in-batch Acc | in-batch R@20 | full Acc | full R@20 | n | tied queries (in-batch / full) |",
             "|---|---|---|---|---|---|---|"]
    for pair, res in original.items():
        ties = f"{res['in_batch'].get('tied_queries', 0)} / {res['full'].get('tied_queries', 0)}"
        for d in ("a2b", "b2a"):
            ib, fu = res["in_batch"], res["full"]
            lines.append(f"| {_arrow(res, d)} | {_pct(ib[f'{d}_acc'])} | {_pct(ib[f'{d}_rec20'])} | "
                         f"{_pct(fu[f'{d}_acc'])} | {_pct(fu[f'{d}_rec20'])} | {res.get('n', '')} | {ties} |")
    return "\n".join(lines)


def protocols_table(retrieval: Mapping, original: Mapping) -> str:
    """The original protocol next to ours, per direction (Acc = R@1)."""
    lines = ["| direction | original in-batch Acc | R@20 | original full Acc | R@20 | "
             "ours in-batch R@1 | R@20 | ours full R@1 | R@20 |", "|" + "---|" * 9]
    for pair, res in original.items():
        ours = retrieval.get(pair)
        for d in ("a2b", "b2a"):
            vals = [res["in_batch"][f"{d}_acc"], res["in_batch"][f"{d}_rec20"],
                    res["full"][f"{d}_acc"], res["full"][f"{d}_rec20"]]
            for scope in ("in_batch", "full"):
                s = ours[scope][d] if ours else None
                vals += [100 * s["R@1"], 100 * s["R@20"]] if s else [None, None]
            lines.append(f"| {_arrow(res, d)} | " + " | ".join(map(_pct, vals)) + " |")
    return "\n".join(lines)


def ladder_table(entry: Mapping) -> str:
    """One pair type's ladder: each step changes one thing from the step above."""
    ab, ba = _arrow(entry, "a2b"), _arrow(entry, "b2a")
    lines = [f"| step | in-batch {ab} Acc | R@20 | in-batch {ba} Acc | R@20 | full {ab} Acc | R@20 | "
             f"full {ba} Acc | R@20 |", "|" + "---|" * 9]
    for i, rung in enumerate(entry["rungs"]):
        vals = [rung[scope][k] for scope in ("in_batch", "full")
                for k in ("a2b_acc", "a2b_rec20", "b2a_acc", "b2a_rec20")]
        name = rung["change"] if i == 0 else "+ " + rung["change"]
        lines.append(f"| {name} | " + " | ".join(map(_pct, vals)) + " |")
    return "\n".join(lines)


def text_summary(results: Mapping) -> str:
    """The tables `evaluate` prints."""
    out = []
    if results.get("retrieval"):
        out += ["Retrieval against the whole test split, our protocol (%):",
                retrieval_table(results["retrieval"], "full"), ""]
    if results.get("original"):
        out += ["Original protocol (%):", original_table(results["original"]), ""]
        if results.get("retrieval"):
            out += ["Original protocol next to ours (%):",
                    protocols_table(results["retrieval"], results["original"]), ""]
    for pair, entry in results.get("ladder", {}).items():
        out += [f"From the original protocol to ours, {pair} (%):", ladder_table(entry), ""]
    if any("screening" in r for r in results.get("retrieval", {}).values()):
        out += ["Virtual screening (AUROC %, EF):", screening_table(results["retrieval"]), ""]
    if results.get("emergent"):
        out += ["Emergent conformer<->text (%):",
                retrieval_table(results["emergent"], "full", with_baselines=False), ""]
    if results.get("classification"):
        out += ["Zero-shot classification (%):", classification_table(results["classification"]), ""]
    if results.get("probes", {}).get("tasks"):
        from molbind_jax.evaluation.probes import probe_table
        out += ["Property probes (test R², RMSE, AUROC):", probe_table(results["probes"]), ""]
    if results.get("skipped"):
        out += [f"skipped: {results['skipped']}"]
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_recall_curves(retrieval: Mapping, path: str) -> str | None:
    """Full-split Recall@K (K = 1..len(curve)) per pair direction, model vs random."""
    items = [(pair, res) for pair, res in retrieval.items() if res.get("curve")]
    if not items:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.6), squeeze=False)
    for ax, (pair, res) in zip(axes[0], items):
        for d, style in (("a2b", "-"), ("b2a", "--")):
            curve = np.asarray(res["curve"][d])
            ks = np.arange(1, len(curve) + 1)
            ax.plot(ks, 100 * curve, style, label=f"MolBind {_arrow(res, d)}")
        n = res["n"]
        ax.plot(ks, 100 * np.minimum(ks / max(n, 1), 1.0), ":", color="gray",
                label="random")
        ax.set_title(f"{pair} (n={n})")
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_metrics_jsonl(path: str) -> list[dict]:
    """Training log lines; unreadable lines (a run killed mid-write) are skipped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def plot_loss_curves(metrics_jsonl: str, path: str) -> str | None:
    """Every numeric series whose name contains 'loss' against 'step'."""
    rows = [r for r in read_metrics_jsonl(metrics_jsonl) if "step" in r]
    keys = sorted({k for r in rows for k, v in r.items()
                   if "loss" in k and isinstance(v, (int, float))})
    if not rows or not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        if pts:
            s, v = zip(*pts)
            ax.plot(s, v, label=k, linewidth=2 if k == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pca_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32)


def plot_embedding_map(embeddings: Mapping[str, np.ndarray], path: str,
                       max_per_modality: int = 500, seed: int = 0) -> str | None:
    """PCA of all modalities' embeddings together, one colour per modality."""
    rng = np.random.default_rng(seed)
    names, chunks = [], []
    for name, e in embeddings.items():
        e = np.asarray(e, np.float32)
        e = e[np.all(np.isfinite(e), axis=1)]
        if len(e) > max_per_modality:
            e = e[rng.choice(len(e), max_per_modality, replace=False)]
        if len(e):
            names.append(name)
            chunks.append(e)
    if not chunks:
        return None
    xy = pca_2d(np.concatenate(chunks))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    start = 0
    for name, e in zip(names, chunks):
        ax.scatter(xy[start:start + len(e), 0], xy[start:start + len(e), 1], s=6, alpha=0.6,
                   label=f"{name} ({len(e)})")
        start += len(e)
    ax.set_title("embedding space (PCA, shared projection)")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report


class NonFiniteEmbeddings(InputError):
    """The model gave NaN or infinite embeddings: metrics on them would be meaningless."""


def check_finite(pair: str, embs: Mapping[str, np.ndarray], what: str = "embeddings") -> None:
    """Refuses a pair whose rows are not all finite, naming the count per modality.

    A NaN score sorts as the worst (metrics.retrieval_ranks), so NaN rows would yield
    ordinary-looking recall numbers for a model that produced nothing; the evaluation stops
    with this error before any report is written."""
    bad = {}
    for modality, e in embs.items():
        e = np.asarray(e, np.float32)
        n_bad = int((~np.isfinite(e).all(axis=1)).sum()) if e.size else 0
        if n_bad:
            rows = np.nonzero(~np.isfinite(e).all(axis=1))[0][:5].tolist()
            bad[modality] = f"{n_bad} of {len(e)} {modality} rows (first: {rows})"
    if bad:
        raise NonFiniteEmbeddings(
            f"{pair}: the model's {what} are not finite (NaN or inf) for "
            + "; ".join(bad.values())
            + "; metrics on them would be meaningless, so no report is written (check the "
              "checkpoint: a NaN weight or a diverged training run)")


def nonfinite_numbers(results, path: str = "") -> list[str]:
    """Key paths of every NaN / infinite number in the results (nested dicts and lists)."""
    out: list[str] = []
    if isinstance(results, Mapping):
        for k, v in results.items():
            out += nonfinite_numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(results, (list, tuple)):
        for i, v in enumerate(results):
            out += nonfinite_numbers(v, f"{path}[{i}]")
    elif isinstance(results, (float, np.floating)) and not np.isfinite(results):
        out.append(path)
    return out


def write_report(workdir: str, results: Mapping, plots: Sequence[str] = ()) -> str:
    """Writes metrics.json and report.md into workdir; returns the report path.

    Refuses (ValueError, nothing written) results holding a NaN or infinite number: such a
    metric comes from embeddings that were not finite and must not read as a result."""
    bad = nonfinite_numbers(results)
    if bad:
        raise ValueError(f"{len(bad)} metrics are not finite (first: {', '.join(bad[:5])}); "
                         f"no report written")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=_json_default)
    md = ["# MolBind zero-shot evaluation", ""]
    model = results.get("model", {})
    if model:
        md += ["Model: " + ", ".join(f"{k}={v}" for k, v in model.items()), ""]
    if results.get("retrieval"):
        md += ["Our protocol: cosine scores in float32; ranks are 0-based; ties count against the "
               "target (a collapsed model gets the worst rank). Full-split: each query against "
               "every candidate of the test split; rows holding the same molecule / text / "
               "protein are all correct answers. In-batch: consecutive batches of 64 pairs as in "
               "the original (last partial batch kept). Numbers are percentages; in brackets a "
               "95% bootstrap interval over the test queries (1000 resamples; it does not cover "
               "training randomness: see evaluation/seeds.py).", ""]
        md += ["## Retrieval against the whole test split", "",
               retrieval_table(results["retrieval"], "full"), "",
               "## In-batch retrieval (batches of 64)", "",
               retrieval_table(results["retrieval"], "in_batch"), ""]
    strict = {p: r for p, r in results.get("retrieval", {}).items() if "strict" in r}
    if strict:
        md += ["## Ligand-specific pockets (strict: only the pocket cut around this ligand "
               "is correct)", "", retrieval_table(strict, "strict"), ""]
    if any("screening" in r for r in results.get("retrieval", {}).values()):
        md += ["## Virtual screening (conformer<->pocket)", "",
               "Each test pocket ranks every test ligand; actives: the ligands paired with its "
               "protein target, decoys: the other test ligands (ligands of other proteins). "
               "AUROC (%, ties count one half) and enrichment factors EF1% / EF5% (hit rate of "
               "the top max(1, ceil(x% of N)) ligands over the overall hit rate; ties share the "
               "cut-off places); averaged over the pockets of a target, then over targets, with "
               "a bootstrap 95% interval over targets. Skipped targets (no decoy or no active) "
               "are listed in metrics.json.", "", screening_table(results["retrieval"]), ""]
    if results.get("original"):
        st = results.get("original_settings", {})
        md += ["## Original protocol", "",
               "The original MolBind evaluation reproduced: " + "; ".join(f"{k}: {v}" for k, v in st.items())
               + ". Acc = R@1; only row i is correct for query i; in-batch numbers unrounded, "
               "full-set numbers rounded to 2 decimals as the original logs them. Tied queries (both "
               "directions together): queries where another candidate has exactly the true "
               "partner's score, which the sort decided (stably here, arbitrarily on the "
               "original's GPU).", "", original_table(results["original"]), ""]
        if results.get("retrieval"):
            md += ["### Original protocol next to ours", "",
                   protocols_table(results["retrieval"], results["original"]), ""]
    if results.get("ladder"):
        md += ["## From the original protocol to ours, one change at a time", "",
               "Each row changes one thing from the row above; the first row is the original "
               "protocol, the last our protocol (its in-batch targets are the diagonal, so the "
               "last change moves only the full-set numbers).", ""]
        for pair, entry in results["ladder"].items():
            md += [f"### {pair} (n={entry.get('n', '')})", "", ladder_table(entry), ""]
    if results.get("emergent"):
        md += ["## Emergent pair (model trained without these pairs)", "",
               retrieval_table(results["emergent"], "full"), ""]
    if results.get("classification"):
        md += ["## Zero-shot classification (candidates are texts)", "",
               classification_table(results["classification"]), ""]
    if results.get("probes"):
        from molbind_jax.evaluation.probes import report_section
        md += report_section(results["probes"])
    if results.get("skipped"):
        md += ["## Skipped records", "", "```", json.dumps(results["skipped"], indent=1),
               "```", ""]
    for p in plots:
        if p:
            md += [f"![{os.path.basename(p)}]({os.path.basename(p)})", ""]
    path = os.path.join(workdir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
