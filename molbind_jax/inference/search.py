"""Search embeddings (from molbind_jax.inference.embed) with text or SMILES queries.

    python -m molbind_jax.inference.search --checkpoint=runs/demo/export --index=mols.npy \
        --query-text="a penicillin antibiotic" --top_k=5 --labels=mols.smi
    python -m molbind_jax.inference.search --checkpoint=runs/demo/export --index=mols.idx \
        --queries=questions.txt --top_k=10 --output=hits.tsv
    python -m molbind_jax.inference.search --checkpoint=EXPORT --index=mols.npy \
        --queries=mols.smi --query_modality=smiles --output=hits.jsonl

One process loads the model once, embeds every query (one --query-text / --query-smiles, or
every line of --queries: texts, or SMILES with --query_modality=smiles, a name may follow the
SMILES) and answers them all.

--index is either an index directory built by `python -m molbind_jax.index build` (faiss:
exact or approximate), or an embedding `.npy` searched by brute force (numpy: argpartition
of the scores, then a sort of the k). Rows that are not finite (records that failed to
embed) are never returned; rows that are not unit length are refused unless --normalize
(index module docstring). Equal scores are ordered by row index, so output is deterministic.

--checkpoint is an export directory or an original MolBind `.ckpt` (then --tokenizer is
required; --gin_backbone, --dictionaries and --ckpt_config as in molbind_jax.convert.molbind);
use the model that wrote the embeddings.

Output: with --output=FILE.tsv (columns query_id, rank, row, id, score[, label]) or
FILE.jsonl (one object per hit, plus one {query_id, query, error} per query that failed to
embed); otherwise a table per query on stdout. rank is 1-based, row is the row of the
embedding file, id the row's id (ids.txt of the index, X.ids.txt beside X.npy or --ids,
else the row number), label the row's line of --labels. A query id is its 0-based line in
--queries (for SMILES, the name after the SMILES when there is one).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags

from molbind_jax.cli import InputError
from molbind_jax.inference.index import Hits, open_index, top_k_batch

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags; defined only when run as a program, so that importing this
    module (tests, other tools) never collides with other modules' absl flags."""
    from molbind_jax.convert.molbind import define_ckpt_flags
    flags.DEFINE_string("checkpoint", None, "exported model directory or an original MolBind .ckpt")
    flags.DEFINE_string("index", None, "index directory (molbind_jax.index build) or an .npy "
                        "embedding matrix (brute force)")
    flags.DEFINE_string("ids", None, "brute force: one id per row (default X.ids.txt beside X.npy)")
    flags.DEFINE_bool("normalize", False, "brute force: L2-normalise rows that are not unit length")
    flags.DEFINE_string("query_text", None, "one query text (also --query-text)")
    flags.DEFINE_string("query_smiles", None, "one query molecule (also --query-smiles)")
    flags.DEFINE_string("queries", None, "file of queries, one per line")
    flags.DEFINE_enum("query_modality", "text", ["text", "smiles"], "what the --queries lines are")
    flags.DEFINE_enum("smiles_tower", "graph", ["graph", "conformer", "smiles"],
                      "tower for SMILES queries")
    flags.DEFINE_integer("top_k", 10, "hits per query (at least 1)")
    flags.DEFINE_string("labels", None, "optional file with one label per embedding row")
    flags.DEFINE_string("output", None, "write hits to FILE.tsv or FILE.jsonl (default: a "
                        "table on stdout)")
    flags.DEFINE_integer("ef_search", None, "hnsw index: candidate list (default: the index's)")
    flags.DEFINE_integer("nprobe", None, "ivf index: cells searched (default: the index's)")
    flags.DEFINE_integer("batch_size", 32, "queries per embedding batch")
    define_ckpt_flags()


def top_k(index: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """[(row, score)] of the k best finite rows by inner product, score descending, ties by
    row index (one query, no unit-length check: see index.BruteForceIndex for that)."""
    index = np.asarray(index, np.float32)
    query = np.asarray(query, np.float32).ravel()
    if index.ndim != 2 or index.shape[1] != query.shape[0]:
        raise InputError(f"index {index.shape} and query {query.shape} dimensions differ")
    if not np.all(np.isfinite(query)):
        raise InputError("the query could not be embedded")
    rows = np.nonzero(np.all(np.isfinite(index), axis=1))[0]
    if len(rows) == 0:
        return []
    pos, scores = top_k_batch(index[rows], query[None], k)
    return [(int(rows[p]), float(s)) for p, s in zip(pos[0], scores[0])]


def read_labels(path: str | None, n: int) -> list[str]:
    if not path:
        return [""] * n
    from molbind_jax.inference.api import read_lines
    labels = read_lines(path)
    if len(labels) != n:
        raise InputError(f"--labels has {len(labels)} lines but the index has {n} rows")
    return labels


def read_queries(path: str, modality: str) -> tuple[list[str], list[str]]:
    """(query ids, queries) of a --queries file: ids are 0-based line numbers, or for SMILES
    the name after the SMILES when a line has one."""
    from molbind_jax.inference.api import read_lines
    lines = read_lines(path)
    if not lines:
        raise InputError(f"--queries file {path} has no lines")
    if modality == "text":
        return [str(i) for i in range(len(lines))], lines
    ids, smiles = [], []
    for i, line in enumerate(lines):
        fields = line.split(maxsplit=1)
        smiles.append(fields[0] if fields else "")
        ids.append(fields[1].strip() if len(fields) > 1 else str(i))
    return ids, smiles


def embed_queries(mb, queries: list[str], modality: str, smiles_tower: str = "graph"):
    """-> api.Embeddings of the queries (failed ones NaN, listed in .failures)."""
    if modality == "text":
        return mb.embed_texts(queries)
    return mb.embed_smiles(queries, tower=smiles_tower)


def answer(index, vectors: np.ndarray, k: int) -> tuple[Hits, np.ndarray]:
    """Hits of the finite query rows -> (hits for those rows, bool mask of the answered rows)."""
    ok = np.all(np.isfinite(vectors), axis=1)
    if not ok.any():
        return Hits(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), []), ok
    return index.search(vectors[ok], k), ok


def hit_records(query_ids, queries, hits: Hits, ok: np.ndarray, labels=None, failures=()):
    """One dict per hit (query_id, query, rank, row, id, score[, label]) and one per failed
    query (query_id, query, error), in query order."""
    reasons = {f["index"]: f"{f['reason']}: {f['detail']}" for f in failures}
    answered = np.nonzero(ok)[0]
    out = []
    j = 0
    for i, (qid, q) in enumerate(zip(query_ids, queries)):
        if not ok[i]:
            out.append({"query_id": qid, "query": q, "error": reasons.get(i, "not embedded")})
            continue
        assert answered[j] == i
        rank = 0
        for row, rid, score in zip(hits.rows[j], hits.ids[j], hits.scores[j]):
            if row < 0:
                continue
            rank += 1
            rec = {"query_id": qid, "query": q, "rank": rank, "row": int(row), "id": rid,
                   "score": float(score)}
            if labels is not None:
                rec["label"] = labels[int(row)]
            out.append(rec)
        j += 1
    return out


def write_hits(path: str, records: list[dict]) -> None:
    """FILE.tsv (hits only; failed queries are printed on stderr) or FILE.jsonl."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            return
        with_label = any("label" in r for r in records)
        cols = ["query_id", "rank", "row", "id", "score"] + (["label"] if with_label else [])
        f.write("\t".join(cols) + "\n")
        for r in records:
            if "error" in r:
                continue
            vals = [str(r[c]) if c != "score" else f"{r[c]:.6f}" for c in cols]
            f.write("\t".join(v.replace("\t", " ").replace("\n", " ") for v in vals) + "\n")


def print_table(records: list[dict], index_meta: dict) -> None:
    by_query: dict = {}
    for r in records:
        by_query.setdefault((r["query_id"], r["query"]), []).append(r)
    excluded = index_meta.get("nonfinite_excluded", 0) + index_meta.get("zero_excluded", 0)
    for (qid, q), recs in by_query.items():
        if len(by_query) > 1:
            print(f"query {qid}: {q}")
        if "error" in recs[0]:
            print(f"query failed: {recs[0]['error']}")
            continue
        print(f"top {len(recs)} of {index_meta['rows']} rows ({excluded} NaN rows excluded)")
        print(f"{'rank':>4}  {'row':>6}  {'score':>8}  {'id':<10}  label")
        for r in recs:
            print(f"{r['rank']:>4}  {r['row']:>6}  {r['score']:8.4f}  {r['id']:<10}  "
                  f"{r.get('label', '')}")


def main(argv):
    del argv
    if not FLAGS.checkpoint or not FLAGS.index:
        raise InputError("--checkpoint and --index are required")
    given = [n for n in ("query_text", "query_smiles", "queries") if getattr(FLAGS, n) is not None]
    if len(given) != 1:
        raise InputError("give exactly one of --query-text, --query-smiles, --queries")
    if FLAGS.top_k < 1:
        raise InputError(f"--top_k must be at least 1, got {FLAGS.top_k}")
    if FLAGS.output and not FLAGS.output.endswith((".tsv", ".jsonl")):
        raise InputError(f"--output must end in .tsv or .jsonl, got {FLAGS.output}")
    if FLAGS.queries is not None:
        query_ids, queries = read_queries(FLAGS.queries, FLAGS.query_modality)
        modality = FLAGS.query_modality
    else:
        modality = "text" if FLAGS.query_text is not None else "smiles"
        query_ids, queries = ["0"], [FLAGS.query_text if modality == "text" else FLAGS.query_smiles]
    index = open_index(FLAGS.index, ids=FLAGS.ids, normalize=FLAGS.normalize,
                       ef_search=FLAGS.ef_search, nprobe=FLAGS.nprobe)
    labels = read_labels(FLAGS.labels, index.meta["rows"]) if FLAGS.labels else None
    from molbind_jax.convert.molbind import checked_ckpt_kwargs
    from molbind_jax.inference.api import MolBindModel
    load_kwargs = checked_ckpt_kwargs(FLAGS, FLAGS.checkpoint)
    mb = MolBindModel.load(FLAGS.checkpoint, batch_size=FLAGS.batch_size,
                           progress=len(queries) > FLAGS.batch_size, **load_kwargs)
    emb = embed_queries(mb, queries, modality, FLAGS.smiles_tower)
    hits, ok = answer(index, emb.vectors, FLAGS.top_k)
    records = hit_records(query_ids, queries, hits, ok, labels, emb.failures)
    for r in records:
        if "error" in r:
            print(f"query {r['query_id']} failed: {r['error']}", file=sys.stderr)
    if FLAGS.output:
        write_hits(FLAGS.output, records)
        print(f"wrote {FLAGS.output}: {int(ok.sum())} of {len(queries)} queries answered, "
              f"top {FLAGS.top_k} of {index.meta['indexed']} indexed rows "
              f"({index.meta['kind']})")
    else:
        print_table(records, index.meta)
    return 0 if ok.any() else 1


def _dashed_flags(argv: list[str]) -> list[str]:
    """Accept --query-text / --query-smiles / --top-k as spelled in the docs."""
    out = []
    for a in argv:
        for dashed in ("--query-text", "--query-smiles", "--top-k", "--smiles-tower",
                       "--query-modality"):
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
