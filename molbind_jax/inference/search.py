"""Search an embedding index (from molbind_jax.inference.embed) with a text or a SMILES query.

    python -m molbind_jax.inference.search --checkpoint=runs/demo/export --index=mols.npy \
        --query-text="a penicillin antibiotic" --top_k=5 --labels=mols.smi

--checkpoint is an export directory or an original MolBind `.ckpt` (then --tokenizer is
required; --gin_backbone, --dictionaries and --ckpt_config as in molbind_jax.convert.molbind);
use the model that wrote the index.

Prints rank, row index, cosine score and label (the row's line of --labels, if given).
NaN rows (records that failed to embed) are never returned. Equal scores are ordered by row
index, so output is deterministic.
"""
from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags; defined only when run as a program, so that importing this
    module (tests, other tools) never collides with other modules' absl flags."""
    from molbind_jax.convert.molbind import define_ckpt_flags
    flags.DEFINE_string("checkpoint", None, "exported model directory or an original MolBind .ckpt")
    flags.DEFINE_string("index", None, ".npy embedding matrix written by molbind_jax.inference.embed")
    flags.DEFINE_string("query_text", None, "query text (also --query-text)")
    flags.DEFINE_string("query_smiles", None, "query molecule (also --query-smiles)")
    flags.DEFINE_enum("smiles_tower", "graph", ["graph", "conformer"], "tower for a SMILES query")
    flags.DEFINE_integer("top_k", 10, "rows to print")
    flags.DEFINE_string("labels", None, "optional file with one label per index row")
    define_ckpt_flags()


def top_k(index: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """[(row, score)] of the k best finite rows, score descending, ties by row index."""
    index = np.asarray(index, np.float32)
    query = np.asarray(query, np.float32).ravel()
    if index.ndim != 2 or index.shape[1] != query.shape[0]:
        raise ValueError(f"index {index.shape} and query {query.shape} dimensions differ")
    if not np.all(np.isfinite(query)):
        raise ValueError("the query could not be embedded")
    scores = index @ query
    rows = np.nonzero(np.isfinite(scores))[0]
    order = rows[np.lexsort((rows, -scores[rows]))]
    return [(int(r), float(scores[r])) for r in order[:k]]


def read_labels(path: str | None, n: int) -> list[str]:
    if not path:
        return [""] * n
    from molbind_jax.inference.api import read_lines
    labels = read_lines(path)
    if len(labels) != n:
        raise ValueError(f"--labels has {len(labels)} lines but the index has {n} rows")
    return labels


def main(argv):
    del argv
    if not FLAGS.checkpoint or not FLAGS.index:
        raise app.UsageError("--checkpoint and --index are required")
    if (FLAGS.query_text is None) == (FLAGS.query_smiles is None):
        raise app.UsageError("give exactly one of --query-text / --query-smiles")
    from molbind_jax.inference.api import MolBindModel
    from molbind_jax.convert.molbind import checked_ckpt_kwargs
    index = np.load(FLAGS.index)
    labels = read_labels(FLAGS.labels, len(index))
    load_kwargs = checked_ckpt_kwargs(FLAGS, FLAGS.checkpoint)
    mb = MolBindModel.load(FLAGS.checkpoint, **load_kwargs)
    if FLAGS.query_text is not None:
        q = mb.embed_texts([FLAGS.query_text])
    else:
        q = mb.embed_smiles([FLAGS.query_smiles], tower=FLAGS.smiles_tower)
    if q.failures:
        print(f"query failed: {q.failures[0]['reason']}: {q.failures[0]['detail']}",
              file=sys.stderr)
        return 1
    hits = top_k(index, q.vectors[0], FLAGS.top_k)
    n_nan = int(np.sum(~np.all(np.isfinite(index), axis=1)))
    print(f"top {len(hits)} of {len(index)} rows ({n_nan} NaN rows excluded)")
    print(f"{'rank':>4}  {'row':>6}  {'score':>8}  label")
    for rank, (row, score) in enumerate(hits, 1):
        print(f"{rank:>4}  {row:>6}  {score:8.4f}  {labels[row]}")
    return 0


def _dashed_flags(argv: list[str]) -> list[str]:
    """Accept --query-text / --query-smiles / --top-k as spelled in the docs."""
    out = []
    for a in argv:
        for dashed in ("--query-text", "--query-smiles", "--top-k", "--smiles-tower"):
            if a == dashed or a.startswith(dashed + "="):
                a = a.replace(dashed, dashed.replace("-", "_").replace("__", "--", 1), 1)
        out.append(a)
    return out


def cli():
    """The `molbind-search` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    define_flags()
    sys.exit(cli_run(main, argv=_dashed_flags(sys.argv)))


if __name__ == "__main__":
    cli()
