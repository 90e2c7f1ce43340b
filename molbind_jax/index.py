"""The `molbind-index` command: build a vector index over an embedding file once.

    python -m molbind_jax.index build --embeddings=mols.npy --output=mols.idx
    python -m molbind_jax.index build --embeddings=X.npy --ids=X.ids.txt --output=IDX \
        --kind=hnsw --normalize

then `python -m molbind_jax.inference.search --index=mols.idx ...`. The index format, the
kinds and the row rules are in molbind_jax/inference/index.py.
"""
from __future__ import annotations

import sys

from absl import flags

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags; defined only when run as a program."""
    from molbind_jax.inference.index import KINDS
    flags.DEFINE_string("embeddings", None, ".npy matrix [rows, dim] (molbind_jax.inference.embed)")
    flags.DEFINE_string("ids", None, "one id per row (default: X.ids.txt beside X.npy when it "
                        "exists, else the row number)")
    flags.DEFINE_string("output", None, "index directory to write")
    flags.DEFINE_enum("kind", "exact", list(KINDS), "exact inner product, or approximate "
                      "(hnsw graph, ivf cells)")
    flags.DEFINE_bool("normalize", False, "L2-normalise the rows (otherwise rows that are not "
                      "unit length are refused)")
    flags.DEFINE_integer("hnsw_m", 32, "hnsw: neighbours per node")
    flags.DEFINE_integer("ef_construction", 80, "hnsw: candidate list while building")
    flags.DEFINE_integer("ef_search", 64, "hnsw: default candidate list while searching")
    flags.DEFINE_integer("nlist", 0, "ivf: number of cells (0: about sqrt(rows))")
    flags.DEFINE_integer("nprobe", 16, "ivf: default number of cells searched")
    flags.DEFINE_integer("seed", 0, "ivf: seed of the training sample and k-means")


def main(argv):
    from molbind_jax.cli import InputError
    from molbind_jax.inference.index import build

    if argv[1:] != ["build"]:
        raise InputError(f"usage: molbind-index build --embeddings=X.npy --output=IDX [...]; "
                         f"got {' '.join(argv[1:]) or 'no command'}")
    for name in ("embeddings", "output"):
        if not getattr(FLAGS, name):
            raise InputError(f"--{name} is required")
    meta = build(FLAGS.embeddings, FLAGS.output, ids=FLAGS.ids, kind=FLAGS.kind,
                 normalize=FLAGS.normalize, hnsw_m=FLAGS.hnsw_m,
                 ef_construction=FLAGS.ef_construction, ef_search=FLAGS.ef_search,
                 nlist=FLAGS.nlist, nprobe=FLAGS.nprobe, seed=FLAGS.seed)
    print(f"wrote {FLAGS.output}: {meta['kind']} index of {meta['indexed']} of {meta['rows']} "
          f"rows x {meta['dim']} ({meta['nonfinite_excluded']} non-finite rows excluded, "
          f"{meta['zero_excluded']} zero rows excluded, "
          f"{meta['rows_renormalized']} rows normalised)")
    return 0


def cli():
    """The `molbind-index` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    define_flags()
    sys.exit(cli_run(main))


if __name__ == "__main__":
    cli()
