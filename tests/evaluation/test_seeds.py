"""seeds.py: the spread over runs from hand-made metrics.json files; demo.sh's DEMO_SEEDS
loop with the steps replaced by a stub (no build, training or evaluation is run)."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from molbind_jax.cli import InputError
from molbind_jax.evaluation import seeds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _metrics(r1, mrr=0.5, split="test", with_pocket=True):
    s = {"R@1": r1, "MRR": mrr, "n": 25, "ci95": {"R@1": [0.0, 1.0]}}
    out = {"model": {"path": "/x", "dataset": "molbind_mini", "split": split},
           "retrieval": {"graph_text": {"a": "graph", "b": "text", "n": 25,
                                        "full": {"a2b": dict(s)}, "curve": {"a2b": [r1, 1.0]},
                                        "baselines": {"tfidf": {"full": {"a2b": {**s, "R@1": 0.9}}}},
                                        "random": {"full": {"a2b": {"R@1": 0.04}}}}},
           "classification": {"name": {"num_classes": 500, "model": {"accuracy": r1 / 2, "n": 9},
                                       "skipped_queries": 0}}}
    if with_pocket:
        out["retrieval"]["conformer_pocket"] = {"screening": {"model": {"AUROC": 0.5 + r1, "n": 3,
                                                                        "per_target": {"A": {"AUROC": 1.0}}}}}
    return out


def _write(tmp_path, name, m):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(m))
    return str(d)


def test_flatten_keeps_model_numbers_only():
    flat = seeds.flatten(_metrics(0.2))
    assert flat == {"retrieval/graph_text/full/a2b/R@1": 0.2,
                    "retrieval/graph_text/full/a2b/MRR": 0.5,
                    "retrieval/conformer_pocket/screening/model/AUROC": 0.7,
                    "classification/name/model/accuracy": 0.1}


def test_aggregate_mean_sd_min_max_and_runs(tmp_path):
    dirs = [_write(tmp_path, f"s{i}", _metrics(r, with_pocket=i < 2)) for i, r in enumerate((0.1, 0.2, 0.6))]
    out = seeds.run(dirs, str(tmp_path / "out"))
    st = out["numbers"]["retrieval/graph_text/full/a2b/R@1"]
    assert st["mean"] == pytest.approx(0.3) and st["sd"] == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1))
    assert (st["min"], st["max"], st["runs"]) == (0.1, 0.6, 3)
    mrr = out["numbers"]["retrieval/graph_text/full/a2b/MRR"]
    assert mrr["sd"] == 0.0 and mrr["mean"] == 0.5
    # A number one run lacks is aggregated over the runs that have it.
    auroc = out["numbers"]["retrieval/conformer_pocket/screening/model/AUROC"]
    assert auroc["runs"] == 2 and auroc["mean"] == pytest.approx(0.65)
    assert out["n_runs"] == 3
    saved = json.load(open(tmp_path / "out" / "seeds.json"))
    assert saved["numbers"] == out["numbers"]
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "| retrieval/graph_text/full/a2b/R@1 | 0.3 | 0.2646 | 0.1 | 0.6 | 3 |" in md
    # A metrics.json file can be named directly; one run has no sd.
    one = seeds.run([os.path.join(dirs[0], "metrics.json")], str(tmp_path / "one"))
    assert one["numbers"]["retrieval/graph_text/full/a2b/R@1"]["sd"] is None
    assert "| retrieval/graph_text/full/a2b/R@1 | 0.1 | – | 0.1 | 0.1 | 1 |" in (tmp_path / "one" / "seeds.md").read_text()


def test_refuses_missing_runs_and_other_splits(tmp_path):
    a = _write(tmp_path, "a", _metrics(0.1))
    b = _write(tmp_path, "b", _metrics(0.2, split="validation"))
    with pytest.raises(InputError, match="different"):
        seeds.run([a, b], str(tmp_path / "out"))
    with pytest.raises(InputError, match="no metrics.json"):
        seeds.run([a, str(tmp_path / "nope")], str(tmp_path / "out"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        seeds.run([str(tmp_path / "bad")], str(tmp_path / "out"))


STUB = r"""#!/usr/bin/env bash
# Stands in for python in demo.sh: logs each call, fakes the step's outputs; the seeds step
# runs the real module.
echo "$*" >> "$STUB_LOG"
arg() { for a in "$@"; do case "$a" in --$KEY=*) echo "${a#--$KEY=}";; esac; done; }
case "$2" in
  molbind_jax.training.train)
    KEY=workdir; wd=$(arg "$@"); KEY=config.seed; s=$(arg "$@")
    mkdir -p "$wd/checkpoints/10"; echo "${s:-0}" > "$wd/seed.txt";;
  molbind_jax.training.export) KEY=output; mkdir -p "$(arg "$@")";;
  molbind_jax.evaluation.evaluate)
    KEY=workdir; wd=$(arg "$@"); s=$(cat "$wd/seed.txt")
    printf '{"model": {"split": "test"}, "retrieval": {"graph_text": {"full": {"a2b": {"R@1": 0.%s}}}}}' "$s" > "$wd/metrics.json"
    printf '## Retrieval against the whole test split\n| x |\n## In-batch\n' > "$wd/report.md";;
  molbind_jax.evaluation.seeds) exec "$REAL_PY" "$@";;
esac
"""


def _demo(tmp_path, seeds_env):
    stub = tmp_path / "py"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / f"calls{seeds_env}.log"
    env = dict(os.environ, PY=str(stub), STUB_LOG=str(log), REAL_PY=sys.executable,
               DEMO_SEEDS=seeds_env, TFDS_DATA_DIR=str(tmp_path / "tfds"),
               PYTHONPATH=os.pathsep.join(sys.path), JAX_PLATFORMS="cpu")
    work = tmp_path / f"demo{seeds_env}"
    run = subprocess.run(["bash", os.path.join(REPO, "experiments", "demo.sh"), str(work)],
                         capture_output=True, text=True, env=env, timeout=300)
    calls = log.read_text().splitlines() if log.exists() else []
    return run, calls, work


def test_demo_trains_evaluates_and_aggregates_each_seed(tmp_path):
    run, calls, work = _demo(tmp_path, "3")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trains = [c for c in calls if "molbind_jax.training.train" in c]
    assert len(trains) == 3
    assert "--config.seed" not in trains[0] and f"--workdir={work} " in trains[0] + " "
    assert trains[1].endswith(f"--workdir={work}/seed_1 --config.seed=1")
    assert trains[2].endswith(f"--workdir={work}/seed_2 --config.seed=2")
    evals = [c for c in calls if "molbind_jax.evaluation.evaluate" in c]
    assert [e.split("--workdir=")[1].split()[0] for e in evals] == [str(work), f"{work}/seed_1", f"{work}/seed_2"]
    assert sum("molbind_jax.training.export" in c for c in calls) == 3
    st = json.load(open(work / "seeds.json"))["numbers"]["retrieval/graph_text/full/a2b/R@1"]
    assert st["runs"] == 3 and st["mean"] == pytest.approx(0.1) and st["max"] == 0.2
    assert "| retrieval/graph_text/full/a2b/R@1 | 0.1 | 0.1 | 0 | 0.2 | 3 |" in run.stdout


def test_demo_with_one_seed_is_unchanged_and_bad_counts_refused(tmp_path):
    run, calls, work = _demo(tmp_path, "1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sum("training.train" in c for c in calls) == 1
    assert not any("evaluation.seeds" in c for c in calls) and not (work / "seeds.md").exists()
    bad, calls, _ = _demo(tmp_path, "0")
    assert bad.returncode == 2 and "DEMO_SEEDS" in bad.stderr and not calls
