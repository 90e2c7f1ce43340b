"""Zero-shot evaluation of a MolBind on the test split, with baselines and a report.

    python -m molbind_jax.evaluation.evaluate --workdir=runs/demo            # uses runs/demo/export
    python -m molbind_jax.evaluation.evaluate --checkpoint=EXPORT --output_dir=DIR
    python -m molbind_jax.evaluation.evaluate --workdir=runs/demo --emergent_workdir=runs/emergent
    python -m molbind_jax.evaluation.evaluate --checkpoint=molbind.ckpt --tokenizer=SCIBERT_DIR \
        --gin_backbone=graph_pretrain.pth --dictionaries=DICT_DIR --output_dir=DIR

`--protocol=both` (default) reports our protocol and the original's side by side, plus a
ladder from one to the other (evaluate_original.py); `ours` or `original` runs one of them.

Ours: for every pair type and both directions, Recall@1/5/10/20 and MRR on cosine scores in
float32, in-batch (batches of 64 in split order, last partial batch kept) and against the
whole test split (blocked ranking, metrics.blocked_ranks). Full-split correct answers are
every row that holds the same molecule (canonical SMILES) or the same text / protein target
as the query's partner, so a repeated molecule or a shared class text is not counted as a
miss. Ties count against the target (metrics module docstring). Text is tokenised with
[CLS]/[SEP] (as in training) by the model's own tokenizer from the record's raw text.
Conformers: the first stored conformer of each record (the original picked one at random,
spec §5.9).

The original's protocol (evaluate_original module docstring): raw projections, bf16 scores
(`--bf16`, default on), text without [CLS]/[SEP] (`--original_text_tokens`, default on),
Uni-Mol inputs padded as its collater, Acc and R@20 from a sort, the true partner only.

Every model and baseline number of ours comes with a bootstrap 95% interval over the
queries (`ci95` next to the numbers in metrics.json; metrics.bootstrap_ci). conformer<->pocket
also gets virtual-screening metrics (each pocket ranks every test ligand: AUROC, EF at 1% and
5%, mean over targets; screening.py).

Next to the model (ours): the analytic random expectation (per query, given its number of
correct answers) and the non-learned baselines of baselines.py; zero-shot classification
where the candidates are texts (molbind_data.sources.mini.classification_tasks);
optionally the emergent conformer<->text pair of a model trained without conformer_text
pairs.

--checkpoint is an export directory or an original MolBind `.ckpt` (with --tokenizer,
required, and --gin_backbone / --dictionaries / --ckpt_config; convert.molbind).
--probes (default on; --noprobes: off) adds frozen-embedding property probes (probes.py).

Writes <out>/report.md, <out>/metrics.json, <out>/recall_curves.png, <out>/loss_curves.png
(from <workdir>/metrics.jsonl), <out>/embedding_map.png, and prints the tables.
"""
from __future__ import annotations

import collections
import os
import sys
import time
from typing import Mapping, Sequence

import numpy as np
from absl import app, flags, logging

from molbind_data import schema
from molbind_jax.evaluation import baselines, metrics, report, screening
from molbind_jax.evaluation import probes as probe_mod
from molbind_jax.evaluation.report import NonFiniteEmbeddings, check_finite  # noqa: F401
from molbind_jax.evaluation import evaluate_original as eo

CURVE_K = 50
PROTOCOLS = ("both", "ours", "original")

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags; defined only when run as a program, so that importing this
    module (tests, other tools) never collides with other modules' absl flags."""
    flags.DEFINE_string("workdir", None, "training workdir: model from <workdir>/export, report "
                        "written into <workdir>, loss curves from <workdir>/metrics.jsonl")
    from molbind_jax.convert.molbind import define_ckpt_flags
    flags.DEFINE_string("checkpoint", None, "exported model directory or an original MolBind .ckpt "
                        "(overrides <workdir>/export)")
    flags.DEFINE_string("output_dir", None, "where to write the report (default: workdir)")
    flags.DEFINE_string("emergent_workdir", None, "workdir (or export dir) of a model trained "
                        "without conformer_text pairs; adds the emergent conformer<->text section")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the one the run in --workdir trained "
                        "on, else $TFDS_DATA_DIR or TFDS's default)")
    flags.DEFINE_string("dataset", "molbind_mini", "TFDS dataset name (default: the one the run in "
                        "--workdir trained on, else molbind_mini)")
    flags.DEFINE_string("split", "test", "split to evaluate")
    flags.DEFINE_list("pairs", [], "pair types to evaluate (default: every pair type of the table, "
                      "data_pipeline/schema.py, whose two modalities the model has)")
    flags.DEFINE_integer("max_records", 0, "evaluate at most this many records per pair (0 = all)")
    flags.DEFINE_integer("block_size", 1024, "row/column block of the full-split ranking")
    flags.DEFINE_integer("batch_size", 64, "rows per embedding batch (the original protocol needs "
                         "the original's 64)")
    flags.DEFINE_bool("classification", True, "run the zero-shot classification tasks")
    flags.DEFINE_enum("protocol", "both", list(PROTOCOLS), "ours, the original's (spec section 4), "
                      "or both side by side with the ladder between them")
    flags.DEFINE_bool("bf16", True, "original protocol: bfloat16 embeddings and scores, as under the "
                      "original's bf16 autocast (--nobf16: float32)")
    flags.DEFINE_bool("original_text_tokens", True, "original protocol: text re-tokenised WITHOUT "
                      "[CLS]/[SEP], as the original's evaluation (--nooriginal_text_tokens: with them)")
    flags.DEFINE_string("compile_cache", None, "JAX persistent compilation cache: auto (the user cache), off, "
                        "or a directory; default $MOLBIND_JAX_COMPILE_CACHE, else auto (training/compile_cache.py)")
    define_ckpt_flags()
    probe_mod.define_flags()


# ----------------------------------------------------------------------------- helpers


def _s(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def record_keys(pair: str, records: Sequence[Mapping]) -> tuple[list, list]:
    """Identity of side A and side B of each record (each modality's table `identity`: the
    molecule's SMILES, the normalised text, the protein target), for duplicate-aware targets."""
    from molbind_jax.modalities import pair_specs

    a, b = pair_specs(pair)
    return [a.identity(r) for r in records], [b.identity(r) for r in records]


def pair_targets(keys_a: Sequence, keys_b: Sequence) -> np.ndarray:
    """Row i's correct answers: every j whose A side or B side equals i's (int [N,T], -1 pad).

    Symmetric, so the same targets serve a->b and b->a.
    """
    ga, gb = collections.defaultdict(set), collections.defaultdict(set)
    for j, (ka, kb) in enumerate(zip(keys_a, keys_b)):
        ga[ka].add(j)
        gb[kb].add(j)
    rows = [sorted(ga[ka] | gb[kb]) for ka, kb in zip(keys_a, keys_b)]
    out = np.full((len(rows), max(map(len, rows))), -1, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def targets_mask(targets: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros((len(targets), n), bool)
    rows, cols = np.nonzero(targets >= 0)
    mask[rows, targets[rows, cols]] = True
    return mask


def random_expected(num_candidates: int, num_targets: Sequence[int]) -> dict:
    """Mean over queries of the analytic random scorer, each with its own number of targets."""
    counts = collections.Counter(int(t) for t in num_targets)
    total = sum(counts.values())
    out = collections.defaultdict(float)
    for t, c in counts.items():
        for k, v in metrics.random_baseline(num_candidates, t).items():
            if k != "n":
                out[k] += v * c / total
    return dict(out, n=total)


def random_in_batch(n: int, batch_size: int = 64) -> dict:
    sizes = [min(batch_size, n - s) for s in range(0, n, batch_size)]
    out = collections.defaultdict(float)
    for size in sizes:
        for k, v in metrics.random_baseline(size, 1).items():
            if k != "n":
                out[k] += v * size / n
    return dict(out, n=n)


def in_batch_from_sim(sim: np.ndarray, batch_size: int = 64) -> dict:
    """In-batch protocol for a precomputed [N, N] similarity (baselines)."""
    n = sim.shape[0]
    r_ab, r_ba = [], []
    for s in range(0, n, batch_size):
        blk = sim[s:s + batch_size, s:s + batch_size]
        d = np.arange(blk.shape[0])
        r_ab.append(metrics.retrieval_ranks(blk, d))
        r_ba.append(metrics.retrieval_ranks(blk.T, d))
    return {"a2b": metrics.summarize(np.concatenate(r_ab), ci=True),
            "b2a": metrics.summarize(np.concatenate(r_ba), ci=True)}


def curve(ranks: np.ndarray, kmax: int = CURVE_K) -> list[float]:
    return [float(np.mean(ranks < k)) for k in range(1, kmax + 1)]


# ----------------------------------------------------------------------------- loading


def resolve_export(path: str) -> str:
    """A workdir (containing export/) or an export directory itself."""
    if os.path.isdir(os.path.join(path, "export")):
        return os.path.join(path, "export")
    return path


def load_test_records(pair: str, *, dataset: str, data_dir: str | None, split: str,
                      max_records: int = 0) -> tuple[list[dict], dict]:
    """Records of one pair type, in split order, validated; malformed ones are counted."""
    from molbind_jax.data.batching import record_sizes
    from molbind_jax.data.pipeline import load_records
    source = load_records(pair, split, dataset=dataset, data_dir=data_dir)
    n = len(source)
    if max_records:
        n = min(n, max_records)
    records, skipped = [], collections.Counter()
    for i in range(n):
        r = dict(source[i])
        try:
            record_sizes(pair, r)
        except (ValueError, KeyError) as err:
            skipped[f"malformed: {str(err)[:60]}"] += 1
            continue
        records.append(r)
    return records, dict(skipped)


def retokenize_texts(mb, records: Sequence[Mapping], *, original: bool
                     ) -> tuple[list[dict], dict, int]:
    """Text ids from each record's raw text by the model's own tokenizer: `text_ids` with
    [CLS]/[SEP] (ours), and `text_ids_original` without them when `original`.

    The stored ids were made by the dataset's tokenizer, which need not be the model's (a
    SciBERT .ckpt on a MiniLM-built split). A record whose text no longer tokenises is
    skipped and counted. Returns (records, skipped, number of records whose stored ids differ
    from the model tokenizer's)."""
    out, skipped, differ = [], collections.Counter(), 0
    for r in records:
        try:
            ids = eo.original_text_ids(mb, r["text"], special_tokens=True)
            extra = ({"text_ids_original": eo.original_text_ids(mb, r["text"], special_tokens=False)}
                     if original else {})
        except Exception as err:  # noqa: BLE001 -- a bad record is counted, not fatal
            skipped[f"text: {type(err).__name__}: {str(err)[:50]}"] += 1
            continue
        stored = np.asarray(r.get("text_ids", []), np.int32).ravel()
        differ += int(stored.shape != ids.shape or not np.array_equal(stored, ids))
        out.append(dict(r, text_ids=ids, **extra))
    return out, dict(skipped), differ


# ----------------------------------------------------------------------------- evaluation


def evaluate_pair(mb, pair: str, records: Sequence[Mapping], *, block_size: int = 1024,
                  with_baselines: bool = True, embeddings: tuple | None = None
                  ) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics of one pair type -> (results entry, {modality: embeddings}).

    embeddings: the L2-normalised (a, b) rows of `records` if already computed; otherwise
    `mb.embed_records` embeds them."""
    tower_a, tower_b = schema.pair_type(pair).modalities
    t0 = time.time()
    if embeddings is None:
        emb_a = mb.embed_records(tower_a, records)
        emb_b = mb.embed_records(tower_b, records)
    else:
        emb_a, emb_b = (np.asarray(e, np.float32) for e in embeddings)
    check_finite(pair, {tower_a: emb_a, tower_b: emb_b})
    n = len(records)
    keys_a, keys_b = record_keys(pair, records)
    targets = pair_targets(keys_a, keys_b)
    n_targets = (targets >= 0).sum(axis=1)
    ranks_ab = metrics.blocked_ranks(emb_a, emb_b, targets, block_size)
    ranks_ba = metrics.blocked_ranks(emb_b, emb_a, targets, block_size)
    res = {
        "a": tower_a, "b": tower_b, "n": n,
        "mean_correct_per_query": float(n_targets.mean()),
        "full": {"a2b": metrics.summarize(ranks_ab, ci=True),
                 "b2a": metrics.summarize(ranks_ba, ci=True)},
        "in_batch": {k.replace("x2y", "a2b").replace("y2x", "b2a"): v for k, v in
                     metrics.in_batch_metrics(emb_a, emb_b, batch_size=64, ci=True).items()},
        "curve": {"a2b": curve(ranks_ab), "b2a": curve(ranks_ba)},
        "random": {"full": {d: random_expected(n, n_targets) for d in ("a2b", "b2a")},
                   "in_batch": {d: random_in_batch(n) for d in ("a2b", "b2a")}},
        "baselines": {},
        "seconds": round(time.time() - t0, 1),
    }
    if pair == "conformer_pocket":
        # With few test proteins, "same protein" is an easy target; also report the strict
        # task: the pocket cut around this very ligand (other pockets of the protein count
        # as misses), which needs the ligand-specific residues.
        strict = pair_targets(keys_a, ["id:" + _s(r.get("id", j)) for j, r in enumerate(records)])
        s_ab = metrics.blocked_ranks(emb_a, emb_b, strict, block_size)
        s_ba = metrics.blocked_ranks(emb_b, emb_a, strict, block_size)
        n_strict = (strict >= 0).sum(axis=1)
        res["strict"] = {"a2b": metrics.summarize(s_ab, ci=True),
                         "b2a": metrics.summarize(s_ba, ci=True)}
        res["random"]["strict"] = {d: random_expected(n, n_strict) for d in ("a2b", "b2a")}
    base_sims = baselines.pair_baselines(pair, records) if with_baselines else {}
    if base_sims:
        mask = targets_mask(targets, n)
        for name, sim in base_sims.items():
            res["baselines"][name] = {
                "full": {"a2b": metrics.summarize(metrics.retrieval_ranks(sim, mask), ci=True),
                         "b2a": metrics.summarize(metrics.retrieval_ranks(sim.T, mask), ci=True)},
                "in_batch": in_batch_from_sim(sim)}
            if "strict" in res:
                smask = targets_mask(strict, n)
                res["baselines"][name]["strict"] = {
                    "a2b": metrics.summarize(metrics.retrieval_ranks(sim, smask), ci=True),
                    "b2a": metrics.summarize(metrics.retrieval_ranks(sim.T, smask), ci=True)}
    if pair == "conformer_pocket":
        # Virtual screening (screening.py): each pocket ranks every test ligand.
        res["screening"] = screening.screening_section(emb_b @ emb_a.T, keys_a, keys_b, base_sims)
    return res, {tower_a: emb_a, tower_b: emb_b}


def evaluate_classification(mb, tasks: Mapping) -> dict:
    """Zero-shot classification: molecule (graph tower) vs candidate texts."""
    out = {}
    for name, task in tasks.items():
        cands = list(task["candidates"])
        queries = list(task["queries"])
        c = mb.embed_texts(cands)
        check_finite(f"classification task {name}", {"text": c.vectors}, "candidate embeddings")
        q = mb.embed_smiles([qq["smiles"] for qq in queries])
        ok = q.valid & np.array([len(qq["labels"]) > 0 for qq in queries], bool)
        labels = [list(qq["labels"]) for qq, k in zip(queries, ok) if k]
        smiles = [qq["smiles"] for qq, k in zip(queries, ok) if k]
        if not labels:
            out[name] = {"error": "no valid query"}
            continue
        sim = mb.similarity(q.vectors[ok], c.vectors)
        mask = np.zeros(sim.shape, bool)
        for i, ls in enumerate(labels):
            mask[i, ls] = True
        tfidf = baselines.char_ngram_tfidf(smiles, cands)
        rnd = collections.defaultdict(float)
        for ls in labels:
            r = metrics.random_baseline(len(cands), len(set(ls)), ks=(1, 5))
            rnd["accuracy"] += r["R@1"] / len(labels)
            rnd["top5"] += r["R@5"] / len(labels)
            rnd["MRR"] += r["MRR"] / len(labels)
        out[name] = {
            "num_classes": len(cands),
            "model": metrics.classification_metrics(sim, mask, ci=True),
            "baselines": {"smiles_text_tfidf": metrics.classification_metrics(tfidf, mask, ci=True)},
            "random": dict(rnd, n=len(labels)),
            "skipped_queries": int((~ok).sum()),
            "failed_candidates": len(c.failures),
        }
    return out


def _embed_raw(mb, pair: str, records: Sequence[Mapping], *, protocol: str,
               original_text_tokens: bool, batch_size: int) -> tuple:
    """Raw embeddings (a, b) in file order: with the text ids of training (ours; None under
    protocol original when its text differs) and with the original's text ids (None under
    protocol ours). Uni-Mol inputs are padded as the original's collater whenever the
    original protocol is run, so that both protocols rank the very same rows."""
    towers = schema.pair_type(pair).modalities
    padding = "buckets" if protocol == "ours" else "original"
    own_text = protocol != "ours" and towers[1] == "text" and original_text_tokens
    raw_ours = raw_orig = None
    if protocol != "original" or not own_text:
        raw_ours = eo.embed_pair(mb, towers, records, padding=padding, batch_size=batch_size)
    if own_text:
        if raw_ours is None:
            raw_orig = eo.embed_pair(mb, towers, records, padding=padding, batch_size=batch_size,
                                     text_ids_key="text_ids_original")
        else:
            text = [dict(r, text_ids=r["text_ids_original"]) for r in records]
            raw_orig = (raw_ours[0], mb.embed_records("text", text, normalize=False,
                                                      padding=padding, batch_size=batch_size))
    elif protocol != "ours":
        raw_orig = raw_ours
    return (None if protocol == "original" else raw_ours), raw_orig


def model_pairs(model_config) -> tuple[str, ...]:
    """Every pair type of the table whose two modalities the model has towers for."""
    have = set(model_config.modalities)
    return tuple(n for n, p in schema.PAIR_TYPES.items() if set(p.modalities) <= have)


def model_info(path: str, mb, **extra) -> dict:
    info = {"path": os.path.abspath(path), "kind": "ckpt" if mb.import_report else "export"}
    if mb.import_report is not None:
        info.update(bn_stats=mb.import_report.bn_stats, tokenizer=mb.import_report.tokenizer)
    info["unimol_pooling"] = getattr(mb.config, "unimol_pooling", None)
    return dict(info, **extra)


def run(export: str, out_dir: str, *, data_dir: str | None, dataset: str = "molbind_mini",
        split: str = "test", pairs: Sequence[str] = (), max_records: int = 0,
        block_size: int = 1024, batch_size: int = 64, classification: bool = True,
        emergent: str | None = None, workdir: str | None = None, protocol: str = "both",
        bf16: bool = True, original_text_tokens: bool = True, load_kwargs: Mapping | None = None,
        records: Mapping[str, Sequence[Mapping]] | None = None, probes: Mapping | bool = False) -> dict:
    """The whole evaluation; returns the results dict (also written to metrics.json).

    export: an export directory or a `.ckpt` (with `load_kwargs` for MolBindModel.load).
    records: {pair: records in file order} to evaluate instead of reading the split.
    probes: run the property probes (probes.py) with these options (True: the defaults).
    """
    from tqdm import tqdm
    from molbind_jax.inference.api import MolBindModel
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol != "ours" and batch_size != eo.ORIGINAL_BATCH:
        raise ValueError(f"the original protocol embeds and ranks in batches of {eo.ORIGINAL_BATCH} "
                         f"(got batch_size={batch_size}); use --protocol=ours for another size")
    mb = MolBindModel.load(export, batch_size=batch_size, progress=True, **dict(load_kwargs or {}))
    pairs = schema.check_pairs(pairs) if pairs else model_pairs(mb.config)
    results: dict = {"model": model_info(export, mb, split=split, dataset=dataset),
                     "protocol": protocol, "retrieval": {}, "skipped": {}}
    if protocol != "ours":
        results["original"] = {}
        results["original_settings"] = eo.settings(bf16=bf16, original_text_tokens=original_text_tokens)
    if protocol == "both":
        results["ladder"] = {}
    differ: dict[str, int] = {}
    maps: dict[str, np.ndarray] = {}
    for pair in tqdm(pairs, desc="pairs", unit="pair"):
        if records is not None:
            recs, skipped = [dict(r) for r in records[pair]], {}
        else:
            recs, skipped = load_test_records(pair, dataset=dataset, data_dir=data_dir,
                                              split=split, max_records=max_records)
        if "text" in schema.pair_type(pair).modalities:
            recs, bad, differ[pair] = retokenize_texts(
                mb, recs, original=protocol != "ours" and original_text_tokens)
            skipped.update(bad)
        if skipped:
            results["skipped"][pair] = skipped
        if len(recs) < 2:
            results["skipped"][pair] = dict(skipped, too_few_records=len(recs))
            continue
        raw_ours, raw_orig = _embed_raw(mb, pair, recs, protocol=protocol, batch_size=batch_size,
                                        original_text_tokens=original_text_tokens)
        a, b = schema.pair_type(pair).modalities
        for raw, what in ((raw_ours, "embeddings"), (raw_orig, "raw projections")):
            if raw is not None:
                check_finite(pair, dict(zip((a, b), raw)), what)
        if raw_ours is not None:
            res, embs = evaluate_pair(mb, pair, recs, block_size=block_size,
                                      embeddings=tuple(map(eo.l2_normalize, raw_ours)))
            results["retrieval"][pair] = res
        else:
            embs = dict(zip((a, b), map(eo.l2_normalize, raw_orig)))
        for modality, e in embs.items():
            maps.setdefault(modality, e)
        if raw_orig is not None:
            results["original"][pair] = dict(a=a, b=b, n=len(recs),
                                             **eo.evaluate_pair(*raw_orig, bf16=bf16))
        if protocol == "both":
            targets = pair_targets(*record_keys(pair, recs))
            results["ladder"][pair] = {"a": a, "b": b, "n": len(recs), "rungs": eo.ladder(
                raw_orig, raw_ours, targets, bf16=bf16, block_size=block_size)}
    results["model"]["text_ids_differ_from_stored"] = differ
    if emergent:
        eb = MolBindModel.load(resolve_export(emergent), batch_size=batch_size, progress=True)
        recs, _ = load_test_records("conformer_text", dataset=dataset, data_dir=data_dir,
                                    split=split, max_records=max_records)
        recs, _, _ = retokenize_texts(eb, recs, original=False)
        res, _ = evaluate_pair(eb, "conformer_text", recs, block_size=block_size,
                               with_baselines=False)
        results["emergent"] = {"conformer_text": res}
        results["model"]["emergent_export"] = os.path.abspath(resolve_export(emergent))
    if classification and protocol != "original":
        try:
            from molbind_data.sources import mini
            tasks = mini.classification_tasks(split=split)
        except (ImportError, AttributeError) as err:
            results["skipped"]["classification"] = f"unavailable: {err}"
        else:
            results["classification"] = evaluate_classification(mb, tasks)
    if probes:
        results["probes"] = probe_mod.run_probes(mb, probes if isinstance(probes, Mapping) else None)
    os.makedirs(out_dir, exist_ok=True)
    plots = [report.plot_recall_curves(results["retrieval"],
                                       os.path.join(out_dir, "recall_curves.png"))]
    if workdir:
        plots.append(report.plot_loss_curves(os.path.join(workdir, "metrics.jsonl"),
                                             os.path.join(out_dir, "loss_curves.png")))
    plots.append(report.plot_embedding_map(maps, os.path.join(out_dir, "embedding_map.png")))
    results["report"] = report.write_report(out_dir, results, [p for p in plots if p])
    return results


def main(argv):
    del argv
    if not FLAGS.workdir and not FLAGS.checkpoint:
        raise app.UsageError("give --workdir or --checkpoint")
    from molbind_jax.convert.molbind import checked_ckpt_kwargs
    path = FLAGS.checkpoint or os.path.join(FLAGS.workdir, "export")
    out_dir = FLAGS.output_dir or FLAGS.workdir or os.path.dirname(os.path.abspath(path))
    if FLAGS.protocol != "ours" and FLAGS.batch_size != eo.ORIGINAL_BATCH:
        raise app.UsageError(f"the original protocol needs --batch_size={eo.ORIGINAL_BATCH}")
    load_kwargs = checked_ckpt_kwargs(FLAGS, path)  # a missing export is named before any data is read
    from molbind_jax.training import compile_cache
    try:
        compile_cache.enable(FLAGS.compile_cache)  # a re-run reads its compiled programs back
    except ValueError as e:
        raise app.UsageError(str(e))
    from molbind_data.build import resolve_run_data
    dataset, data_dir, pairs = resolve_run_data(
        FLAGS.workdir, FLAGS.dataset if FLAGS["dataset"].present else None, FLAGS.data_dir, FLAGS.pairs)
    logging.info("evaluating %s -> %s (protocol %s)", path, out_dir, FLAGS.protocol)
    results = run(path, out_dir, data_dir=data_dir, dataset=dataset, split=FLAGS.split,
                  pairs=pairs, max_records=FLAGS.max_records, block_size=FLAGS.block_size,
                  batch_size=FLAGS.batch_size, classification=FLAGS.classification,
                  emergent=FLAGS.emergent_workdir, workdir=FLAGS.workdir,
                  protocol=FLAGS.protocol, bf16=FLAGS.bf16,
                  original_text_tokens=FLAGS.original_text_tokens, load_kwargs=load_kwargs,
                  probes=probe_mod.options_from_flags(FLAGS))
    print(report.text_summary(results))
    print(f"\nreport: {results['report']}")
    return 0


def cli():
    """The `molbind-evaluate` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    define_flags()
    sys.exit(cli_run(main))


if __name__ == "__main__":
    cli()
