"""The spread of the evaluation over training seeds: one table from several runs' metrics.json.

    python -m molbind_jax.evaluation.seeds --workdirs=runs/demo,runs/demo/seed_1,runs/demo/seed_2 --output=runs/demo

The bootstrap intervals of one evaluation (metrics.bootstrap_ci) cover the sampling of the
test queries only; a model trained with another seed (initialisation of the towers trained
from scratch, data order, dropout: the config's `seed`) moves the numbers too. This reads
each run's metrics.json (`--workdirs`: workdirs or evaluation output directories holding
one, or the files themselves) and writes <output>/seeds.json and <output>/seeds.md: per
number, the mean, standard deviation (n-1 in the denominator; none for one run), min, max
and the number of runs that have it.

Which numbers: every numeric leaf of metrics.json except the baselines and the random
expectation (the same for every seed), the bootstrap intervals, curves, sizes ("n") and
the model / skipped / timing records. Values are as stored: fractions for our protocol
(retrieval, classification, screening AUROC), factors for EF, percentages for the original
protocol. The runs must have been evaluated on the same dataset and split.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping, Sequence

import numpy as np
from absl import app, flags

from molbind_jax.cli import InputError

FLAGS = flags.FLAGS

# Keys whose subtree is not a per-seed result of the model: at the top of metrics.json
# (the model's description, ...) and anywhere below it.
TOP_SKIP_KEYS = frozenset({"model", "skipped", "report", "original_settings"})
SKIP_KEYS = frozenset({"baselines", "random", "ci95", "curve", "n", "ligands", "seconds",
                       "skipped", "num_classes", "skipped_queries", "failed_candidates",
                       "mean_correct_per_query", "tied_queries", "per_target", "pockets",
                       "actives", "sets", "settings", "split", "alpha", "penalty", "positives"})


def define_flags():
    flags.DEFINE_list("workdirs", None, "runs to aggregate: directories holding metrics.json "
                      "(a workdir the demo evaluated into), or metrics.json files")
    flags.DEFINE_string("output", None, "directory for seeds.json and seeds.md")


def metrics_path(path: str) -> str:
    p = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise InputError(f"no metrics.json at {path} (evaluate the run first: "
                         f"python -m molbind_jax.evaluation.evaluate --workdir=...)")
    return p


def flatten(results, prefix: str = "") -> dict[str, float]:
    """{"retrieval/graph_text/full/a2b/R@1": 0.12, ...}: the numeric leaves (lists and the
    subtrees named in SKIP_KEYS / TOP_SKIP_KEYS left out)."""
    out: dict[str, float] = {}
    if isinstance(results, Mapping):
        for k, v in results.items():
            if str(k) not in SKIP_KEYS and (prefix or str(k) not in TOP_SKIP_KEYS):
                out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(results, (int, float)) and not isinstance(results, bool):
        out[prefix] = float(results)
    return out


def _setting(results: Mapping) -> tuple:
    m = results.get("model", {})
    return m.get("dataset"), m.get("split")


def aggregate(runs: Sequence[Mapping]) -> dict[str, dict]:
    """{number: {mean, sd, min, max, runs}} over the runs' metrics dicts (a number missing
    from a run, e.g. a pair it skipped, is aggregated over the runs that have it)."""
    if not runs:
        raise InputError("no runs to aggregate")
    settings = {_setting(r) for r in runs}
    if len(settings) > 1:
        raise InputError(f"the runs were evaluated on different (dataset, split): {sorted(map(str, settings))}; "
                         f"their numbers are not comparable")
    flat = [flatten(r) for r in runs]
    names = list(dict.fromkeys(k for f in flat for k in f))
    out = {}
    for k in names:
        v = np.array([f[k] for f in flat if k in f], np.float64)
        out[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                  "min": float(v.min()), "max": float(v.max()), "runs": int(v.size)}
    return out


def _num(x) -> str:
    if x is None:
        return "–"
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def table(stats: Mapping[str, Mapping]) -> str:
    lines = ["| number | mean | sd | min | max | runs |", "|---|---|---|---|---|---|"]
    for k, s in stats.items():
        lines.append(f"| {k} | {_num(s['mean'])} | {_num(s['sd'])} | {_num(s['min'])} | "
                     f"{_num(s['max'])} | {s['runs']} |")
    return "\n".join(lines)


def run(workdirs: Sequence[str], output: str) -> dict:
    """Reads the runs, writes seeds.json and seeds.md into `output`; returns seeds.json's dict."""
    paths = [metrics_path(w) for w in workdirs]
    runs = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            try:
                runs.append(json.load(f))
            except json.JSONDecodeError as err:
                raise InputError(f"{p} is not valid JSON ({err})") from None
    stats = aggregate(runs)
    result = {"runs": [os.path.abspath(p) for p in paths], "n_runs": len(runs), "numbers": stats}
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "seeds.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    md = ["# Spread over training runs", "",
          f"{len(runs)} runs: " + ", ".join(paths) + ". Per number: mean, sample standard "
          "deviation, min and max over the runs, and how many runs have it. Values as in "
          "metrics.json (fractions for our protocol, EF as factors, percentages for the original "
          "protocol).", "", table(stats), ""]
    with open(os.path.join(output, "seeds.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return result


def main(argv):
    del argv
    if not FLAGS.workdirs or not FLAGS.output:
        raise app.UsageError("give --workdirs=a,b,c and --output=DIR")
    result = run(FLAGS.workdirs, FLAGS.output)
    print(open(os.path.join(FLAGS.output, "seeds.md"), encoding="utf-8").read())
    print(f"seeds: {os.path.join(FLAGS.output, 'seeds.json')} ({result['n_runs']} runs)")
    return 0


def cli():
    from molbind_jax.cli import run as cli_run

    define_flags()
    sys.exit(cli_run(main))


if __name__ == "__main__":
    cli()
