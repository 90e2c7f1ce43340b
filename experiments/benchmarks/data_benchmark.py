"""Data benchmarks: featurization rate, input-pipeline rate, padding efficiency, batch shapes.

    .venv/bin/python experiments/benchmarks/data_benchmark.py --data_dir=data/tfds \\
        --train_step_seconds=0.5 --output=data_benchmark.json

Featurization runs on real molecules (PubChem rows shipped by the `chemicals` package), one
process, so its rates are per core. The input pipeline reads the built `--dataset` under
`--data_dir`; a pair whose dataset is not built (or not readable) is measured on synthetic
records whose sizes and contents come from the same real molecules (real graphs, real Uni-Mol
tokens with random coordinates, real ChEBI definitions from `c3p` tokenized with the default
MiniLM vocab, synthetic pockets of 58..256 atoms) and is marked "synthetic" in the table.

Targets (docs/input_pipeline.md): padding efficiency >= 0.8 and <= 8 shapes per padded
dimension, and an input pipeline >= 5x the train step rate. `--train_step_seconds` (measured
by the training benchmark) turns the pipeline rate into that ratio; a train step consumes one
batch of every pair, so the ratio uses the mixed (all-pairs) step rate.
"""
from __future__ import annotations

import ast
import glob
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from molbind_data import schema  # noqa: E402  (after the path set-up)
from molbind_jax.data import pipeline as ip  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data_dir with the built dataset (default: $TFDS_DATA_DIR, else "
                    "TFDS's default)")
flags.DEFINE_string("dataset", "molbind_mini", "TFDS dataset name (configs are the pair types)")
flags.DEFINE_string("split", "train", "split to read")
flags.DEFINE_list("pairs", list(schema.PAIR_TYPES), "pair types to benchmark (data_pipeline/schema.py; a view "
                  "reads its stored pair's records)")
flags.DEFINE_integer("global_batch_size", 96, "global batch per pair")
flags.DEFINE_integer("num_local_shards", 8, "graph shards per host (local devices)")
flags.DEFINE_integer("pad_multiple", 8, "derived buckets are multiples of this (8: the original's rule)")
flags.DEFINE_integer("num_batches", 50, "batches timed per pair (after 2 warm-up batches)")
flags.DEFINE_integer("num_molecules", 500, "real molecules for the graph featurization rate")
flags.DEFINE_integer("num_conformer_molecules", 30, "molecules for the conformer generation rate")
flags.DEFINE_integer("num_conformers", 10, "conformers per molecule (Uni-Mol generates 10)")
flags.DEFINE_integer("synthetic_records", 20000, "records per pair when the dataset is not built")
flags.DEFINE_float("train_step_seconds", None, "measured train step time, for the ratio")
flags.DEFINE_string("output", None, "write the results as JSON here")

SITE = os.path.dirname(os.path.dirname(np.__file__))


def real_smiles(n: int) -> list[str]:
    """The first n parseable SMILES of the PubChem table in `chemicals`."""
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")
    path = os.path.join(SITE, "chemicals", "Identifiers", "chemical identifiers pubchem large.tsv")
    out = []
    with open(path) as f:
        for line in f:
            smi = line.split("\t")[4]
            if Chem.MolFromSmiles(smi) is not None:
                out.append(smi)
                if len(out) == n:
                    break
    return out


def real_texts() -> list[str]:
    """ChEBI class definitions from c3p (read with ast, never imported)."""
    texts = []
    for path in sorted(glob.glob(os.path.join(SITE, "c3p", "programs", "*.py"))):
        for node in ast.parse(open(path).read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__metadata__":
                text = ast.literal_eval(node.value)["chemical_class"].get("definition") or ""
                if text.strip():
                    texts.append(text)
    return texts


def featurization_rates(smiles: list[str]) -> dict:
    from molbind_data.featurize import SkipRecord
    from molbind_data.featurize.conformer import generate_conformers, unimol_input
    from molbind_data.featurize.graph import smiles_to_graph

    graphs, skipped = [], 0
    t = time.perf_counter()
    for smi in smiles:
        try:
            graphs.append({"smiles": smi, **smiles_to_graph(smi)})
        except SkipRecord:
            skipped += 1
    graph_s = time.perf_counter() - t
    confs, conf_skipped, fallback = [], 0, 0
    subset = smiles[:FLAGS.num_conformer_molecules]
    t = time.perf_counter()
    for i, smi in enumerate(subset):
        try:
            g = smiles_to_graph(smi)
            atoms, coords, used_2d = generate_conformers(smi, num_conformers=FLAGS.num_conformers, seed=i)
            confs.append((g, unimol_input(atoms, coords, seed=i)))
            fallback += used_2d
        except SkipRecord:
            conf_skipped += 1
    conf_s = time.perf_counter() - t
    return {
        "graph_molecules": len(smiles), "graph_skipped": skipped,
        "graph_mol_per_s_per_core": len(smiles) / graph_s,
        "conformer_molecules": len(subset), "conformer_skipped": conf_skipped,
        "conformer_2d_fallback": fallback, "num_conformers": FLAGS.num_conformers,
        "graph_and_conformer_mol_per_s_per_core": len(subset) / conf_s,
        "_graphs": graphs,
    }


_SYNTHETIC: list[dict] = []


def synthetic_records(graphs: list[dict], texts: list[str], n: int) -> list[dict]:
    """Records of the stored layout with real molecule and text sizes (coordinates random);
    one set serves every pair type (each reads only its own modalities' fields)."""
    if _SYNTHETIC:
        return _SYNTHETIC
    from molbind_data.featurize.conformer import unimol_input
    from molbind_data.featurize.text import get_tokenizer
    from rdkit import Chem

    rng = np.random.default_rng(0)
    tok = get_tokenizer()
    text_ids = [tok.encode(t) for t in texts]
    mols = []
    for g in graphs:
        atoms = [Chem.GetPeriodicTable().GetElementSymbol(int(z) + 1) for z in g["graph_node_feat"][:, 0]]
        conf = unimol_input(atoms, rng.normal(size=(3, len(atoms), 3)).astype(np.float32))
        mols.append({**g, **conf})
    out = []
    for i in range(n):
        r = dict(mols[rng.integers(len(mols))])
        r["text_ids"] = text_ids[rng.integers(len(text_ids))]
        m = int(rng.integers(58, 257)) + 2
        r["pocket_tokens"] = np.concatenate([[1], rng.integers(4, 9, m - 2), [2]]).astype(np.int32)
        r["pocket_coords"] = rng.normal(size=(m, 3)).astype(np.float32)
        out.append(r)
    _SYNTHETIC.extend(out)
    return out


def time_batches(data, num: int) -> float:
    it = iter(data)
    for _ in range(2):
        next(it)
    t = time.perf_counter()
    for _ in range(num):
        next(it)
    return num / (time.perf_counter() - t)


def main(argv):
    del argv
    schema.check_pairs(FLAGS.pairs)  # unknown names list the known ones
    results = {"config": {k: FLAGS[k].value for k in (
        "data_dir", "dataset", "split", "pairs", "global_batch_size", "num_local_shards", "pad_multiple",
        "num_batches", "num_molecules", "num_conformer_molecules", "num_conformers",
        "synthetic_records", "train_step_seconds")}}
    smiles = real_smiles(FLAGS.num_molecules)
    feat = featurization_rates(smiles)
    graphs = feat.pop("_graphs")
    results["featurization"] = feat
    texts = None
    results["pairs"] = {}
    datasets = {}
    for pair in FLAGS.pairs:
        t = time.perf_counter()
        source = "built"
        try:
            records = ip.load_records(pair, FLAGS.split, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir)
        except Exception as err:  # noqa: BLE001 - any unreadable dataset falls back, and says so
            logging.warning("%s/%s not readable (%s): synthetic records", FLAGS.dataset, pair,
                            str(err).strip().splitlines()[0])
            texts = texts or real_texts()
            records, source = synthetic_records(graphs, texts, FLAGS.synthetic_records), "synthetic"
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        data = ip.PairBatches(pair, records, global_batch_size=FLAGS.global_batch_size,
                              num_local_shards=FLAGS.num_local_shards, seed=0,
                              pad_multiple=FLAGS.pad_multiple)
        plan_s = time.perf_counter() - t
        datasets[pair] = data
        stats = data.padding_stats(min(3 * data.steps_per_epoch, 3000))
        results["pairs"][pair] = {
            "source": source, "records": len(records), "usable": int(len(data.valid)),
            "skipped": dict(data.skipped), "steps_per_epoch": data.steps_per_epoch,
            "load_s": load_s, "plan_s": plan_s, "grouping": data.schedule.grouping,
            "buckets": {k: list(v) for k, v in data.buckets.items()},
            "batches_per_s": time_batches(data, FLAGS.num_batches), "padding": stats,
        }
    mixed = ip.MixedPairBatches(datasets)
    results["mixed_steps_per_s"] = time_batches(mixed, FLAGS.num_batches)
    if FLAGS.train_step_seconds:
        results["pipeline_over_train_rate"] = results["mixed_steps_per_s"] * FLAGS.train_step_seconds

    f = results["featurization"]
    print(f"\nfeaturization (1 core): graphs {f['graph_mol_per_s_per_core']:.1f} mol/s; "
          f"graph + {f['num_conformers']} conformers (ETKDG+MMFF) {f['graph_and_conformer_mol_per_s_per_core']:.2f} mol/s "
          f"({f['conformer_skipped']} skipped, {f['conformer_2d_fallback']} 2D fallbacks)")
    print(f"\n{'pair':17s} {'source':9s} {'records':>7s} {'batch/s':>8s}  key          effic. shapes")
    for pair, r in results["pairs"].items():
        for j, (k, s) in enumerate(r["padding"].items()):
            head = f"{pair:17s} {r['source']:9s} {r['records']:7d} {r['batches_per_s']:8.1f}" if j == 0 else " " * 44
            print(f"{head}  {k:12s} {s['efficiency']:.3f}  {s['num_shapes']}")
    print(f"\nall pairs together: {results['mixed_steps_per_s']:.1f} steps/s "
          f"(global batch {FLAGS.global_batch_size} per pair, graph shards: {FLAGS.num_local_shards})")
    if FLAGS.train_step_seconds:
        print(f"pipeline / train step rate: {results['pipeline_over_train_rate']:.1f}x (target >= 5x)")
    if FLAGS.output:
        with open(FLAGS.output, "w") as fh:
            json.dump(results, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
