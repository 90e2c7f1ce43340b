"""Audit an existing build for leakage between its training and evaluation splits.

    python -m molbind_data.leakage --dataset=molbind_mini --data_dir=data/tfds
    python -m molbind_data.leakage --dataset=molbind_m4 --data_dir=DIR --nowrite --output=leakage.json

Reads every built pair type of the dataset in data_dir (their `smiles`, `text` and `target`
fields), prints the summary the build command (molbind_data.build) prints at the end of a build
and, unless --nowrite, writes each pair type's section under `leakage` in its
build_report.json. --output also saves all sections as one JSON file. docs/data.md describes
the fields.
"""
from __future__ import annotations

import json
import os
import sys


def main(argv):
    from absl import flags

    from molbind_data.build import default_data_dir
    from molbind_data.cli import InputError
    from molbind_data.leakage import built

    f = flags.FLAGS
    if f.verbosity < 0:  # no oneDNN notice from TensorFlow's first op (molbind_data/build.py)
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}")
    data_dir = default_data_dir(f.data_dir)
    if not built.built_versions(f.dataset, data_dir):
        raise InputError(f"no built pair type of {f.dataset} in data_dir {data_dir}")
    result = built.audit_dataset(f.dataset, data_dir, write=f.write, max_queries=f.max_queries,
                                 max_references=f.max_references, seed=f.seed)
    print(built.summary(result), flush=True)
    if f.output:
        with open(f.output, "w") as out:
            json.dump(result, out, indent=2, sort_keys=True)
        print(f"sections written to {f.output}")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("dataset", "molbind_mini", "The built dataset (molbind_mini, molbind_m4, molbind_pairs).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
    flags.DEFINE_bool("write", True, "Write each section under `leakage` in the pair type's build_report.json.")
    flags.DEFINE_string("output", None, "Also save every section to this JSON file.")
    flags.DEFINE_integer("max_queries", 500, "Test molecules whose nearest training neighbour is searched "
                         "(a seeded sample when there are more).")
    flags.DEFINE_integer("max_references", 200_000, "Training molecules searched (a seeded sample when "
                         "there are more).")
    flags.DEFINE_integer("seed", 0, "Seed of the samples.")


def cli():
    from molbind_data.cli import run

    _define_flags()
    run(main)
    sys.exit(0)


if __name__ == "__main__":
    cli()
