"""How often a training batch holds duplicates: what the duplicate-aware loss masks.

    .venv/bin/python experiments/benchmarks/duplicates.py --data_dir=data/tfds [--epochs=1] \\
        [--config=experiments/configs/mini.py] [--output=duplicates.json]

For every pair type of the config, the batches of `--epochs` training epochs (the run's global
batch of that pair, its seed and size grouping, one host) are laid out by the same schedule as
training (`PairBatches.global_batch`), and each row's identity keys (`ModalitySpec.identity_key`,
as `collate_pair` fills `PairBatch.x_key`/`y_key`) are looked up. Per pair it prints the
fraction of off-diagonal (anchor, column) entries between valid rows that the loss leaves out
(x key or y key equal), split into x-side and y-side matches, and the fraction of rows that have
at least one duplicate in their batch. Nothing is collated, so it takes seconds.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from molbind_jax.data import pipeline as ip  # noqa: E402  (after the path set-up)
from molbind_jax.modalities import pair_specs  # noqa: E402
from molbind_jax.training import train_inputs  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(__file__), "..", "configs", "mini.py"),
                                "training config: pairs, batch sizes, seed, dataset")
flags.DEFINE_string("data_dir", None, "TFDS data_dir with the built dataset (default: the config's, else "
                    "$TFDS_DATA_DIR)")
flags.DEFINE_integer("epochs", 1, "epochs of each pair's batches to count")
flags.DEFINE_string("output", None, "write the numbers as JSON here")


def batch_counts(kx: np.ndarray, ky: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    """Off-diagonal entries between valid rows of one batch: all, masked (x or y key equal),
    masked by x, masked by y; rows with at least one duplicate; valid rows."""
    kx, ky, mask = kx[mask], ky[mask], np.ones(int(mask.sum()), bool)
    n = len(kx)
    off = ~np.eye(n, dtype=bool)
    sx = (kx[:, None] == kx[None, :]) & (kx[:, None] >= 0) & off
    sy = (ky[:, None] == ky[None, :]) & (ky[:, None] >= 0) & off
    dup = sx | sy
    return {"entries": int(off.sum()), "masked": int(dup.sum()), "masked_x": int(sx.sum()),
            "masked_y": int(sy.sum()), "rows_with_duplicate": int(dup.any(1).sum()), "rows": n}


def pair_stats(pair: str, records, *, global_batch: int, seed: int, epochs: int) -> dict:
    data = ip.PairBatches(pair, records, global_batch_size=global_batch, num_local_shards=1, process_index=0,
                          process_count=1, seed=seed, train=True, prefetch=0)
    specs = pair_specs(pair)
    keys = {}
    total: dict[str, int] = {}
    for step in range(data.steps_per_epoch * epochs):
        idx, mask, _, _ = data.global_batch(step)
        for i in idx:
            if int(i) not in keys:
                r = records[int(i)]
                keys[int(i)] = tuple(s.identity_key(r) for s in specs)
        kx = np.array([keys[int(i)][0] for i in idx])
        ky = np.array([keys[int(i)][1] for i in idx])
        for k, v in batch_counts(kx, ky, np.asarray(mask, bool)).items():
            total[k] = total.get(k, 0) + v
    e = max(total["entries"], 1)
    return {"batch": global_batch, "steps": data.steps_per_epoch * epochs, "records": len(data.valid),
            "distinct_x": len({k[0] for k in keys.values()}), "distinct_y": len({k[1] for k in keys.values()}),
            "masked_fraction": total["masked"] / e, "masked_x_fraction": total["masked_x"] / e,
            "masked_y_fraction": total["masked_y"] / e,
            "rows_with_duplicate_fraction": total["rows_with_duplicate"] / max(total["rows"], 1), **total}


def main(argv):
    del argv
    config = FLAGS.config
    data_dir = FLAGS.data_dir or config.data.data_dir or None
    sizes = train_inputs.pair_batch_sizes(config)
    out = {}
    for pair in config.pairs:
        records = ip.load_records(pair, "train", dataset=config.data.dataset, data_dir=data_dir)
        out[pair] = pair_stats(pair, records, global_batch=sizes[pair], seed=int(config.seed), epochs=FLAGS.epochs)
        s = out[pair]
        print(f"{pair}: batch {s['batch']}, {s['steps']} batches, {s['records']} records "
              f"({s['distinct_x']} distinct x, {s['distinct_y']} distinct y); masked off-diagonal entries "
              f"{100 * s['masked_fraction']:.2f}% (x match {100 * s['masked_x_fraction']:.2f}%, "
              f"y match {100 * s['masked_y_fraction']:.2f}%); rows with a duplicate in their batch "
              f"{100 * s['rows_with_duplicate_fraction']:.1f}%")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    app.run(main)
