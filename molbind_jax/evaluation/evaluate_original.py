"""Evaluation under the original MolBind protocol, next to ours, and the ladder between them.

`evaluate --protocol=original|ours|both` runs the pieces here; `original_protocol` holds the
ranking arithmetic. What the original protocol is (spec section 4, `model/run.py`
`eval_retrieval_inbatch` / `eval_retrieval_fullset` of github.com/MolBind/Code):

* features: the raw projections `proj(ln(pool))`, not L2-normalised (bug 2);
* scores: dot products under bf16 autocast (`bf16=True` rounds embeddings and scores to
  bfloat16; the towers themselves run in the model's own dtype);
* text: tokenised WITHOUT [CLS]/[SEP] (`loader/test_dataset.py`, `add_special_tokens=False`,
  bug 1), max length 256: the text tower pools the first word piece;
* rows in the split's stored (file) order, embedded in batches of 64, Uni-Mol inputs padded
  as the original's `D3Collater` (each batch to its longest molecule rounded up to a multiple
  of 8), which is what a `unimol_pooling="original"` model averages over (bug 7);
* in-batch: those same batches of 64 (last partial batch kept); full set: every row against
  every row; the true partner is row i only; Acc and R@20 in both directions, from a sort
  (ties: stable order here, arbitrary on the original's GPU).

Ours differs on purpose (cosine in float32, text with [CLS]/[SEP] as in training, ties count
against the target, rows with the same molecule / text / protein all correct); `ladder`
changes one difference at a time from the original to ours, so each one's effect is visible.
Not reproduced: the original picked a random conformer, crop and pocket sample at evaluation
(bug 9); here every row uses the first stored conformer, as our protocol does.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from molbind_jax.evaluation import metrics, original_protocol

ORIGINAL_BATCH = 64  # the original's retrieval DataLoader batch, and its in-batch size
KEYS = original_protocol.KEYS  # a2b_acc, a2b_rec20, b2a_acc, b2a_rec20
RUNGS = (
    ("original", "the original protocol"),
    ("float32", "float32 scores instead of bfloat16"),
    ("cosine", "L2-normalised embeddings (cosine)"),
    ("special_tokens", "text with [CLS]/[SEP] (as in training)"),
    ("ties_against", "ties count against the target"),
    ("ours", "duplicates correct: our protocol"),
)


def l2_normalize(x) -> np.ndarray:
    """Rows divided by their L2 norm (eps 1e-12, as the model's own normalisation)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def original_text_ids(mb, text, special_tokens: bool) -> np.ndarray:
    """The record's raw text re-tokenised by the model's tokenizer (max length 256, or the
    text tower's positions if fewer): with [CLS]/[SEP] as in training, or without them as the
    original's retrieval evaluation."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return np.asarray(mb.featurize_text(text, add_special_tokens=special_tokens)["text_ids"], np.int32)


def embed_pair(mb, towers: Sequence[str], records: Sequence[Mapping], *, padding: str,
               batch_size: int, text_ids_key: str = "text_ids") -> tuple[np.ndarray, np.ndarray]:
    """Raw (unnormalised) embeddings of both towers, rows in record (file) order, embedded in
    consecutive batches of `batch_size`. The text tower reads `text_ids_key` of each record."""
    out = []
    for tower in towers:
        recs = records
        if tower == "text" and text_ids_key != "text_ids":
            recs = [dict(r, text_ids=r[text_ids_key]) for r in records]
        out.append(mb.embed_records(tower, recs, normalize=False, padding=padding,
                                    batch_size=batch_size))
    return out[0], out[1]


def evaluate_pair(emb_a, emb_b, *, bf16: bool) -> dict:
    """The original's numbers of one pair type from its raw embeddings in file order
    ({"in_batch": {...}, "full": {...}}, percentages in the original's keys)."""
    return original_protocol.evaluate(emb_a, emb_b, batch_size=ORIGINAL_BATCH, bf16=bf16)


def _ours_rung(a, b, targets, block_size: int) -> dict:
    """Our ranking (ties against the target) in the original's keys (percent, unrounded).
    In-batch targets are the diagonal (as ours); full-set targets as given."""
    ib = metrics.in_batch_metrics(a, b, batch_size=ORIGINAL_BATCH, ks=(1, 20))
    ab = metrics.summarize(metrics.blocked_ranks(a, b, targets, block_size), ks=(1, 20))
    ba = metrics.summarize(metrics.blocked_ranks(b, a, targets, block_size), ks=(1, 20))

    def keys(x, y):
        return {"a2b_acc": 100 * x["R@1"], "a2b_rec20": 100 * x["R@20"],
                "b2a_acc": 100 * y["R@1"], "b2a_rec20": 100 * y["R@20"], "n": x["n"]}
    return {"in_batch": keys(ib["x2y"], ib["y2x"]), "full": keys(ab, ba)}


def ladder(raw_original: tuple[np.ndarray, np.ndarray], raw_ours: tuple[np.ndarray, np.ndarray],
           targets: np.ndarray, *, bf16: bool = True, block_size: int = 1024) -> list[dict]:
    """From the original protocol to ours, one difference at a time (RUNGS).

    raw_original: raw embeddings (a, b) with the original's text ids (no special tokens);
    raw_ours: raw embeddings with the text ids of training ([CLS]/[SEP]); the same arrays
    when the pair has no text or the text was tokenised the same way.
    targets: our full-set targets (int [N, T], -1 padded: every row holding the same molecule
    / text / protein), used by the last rung only.
    Each rung: {"name", "change", "in_batch": {...}, "full": {...}} in the original's keys.
    The first rung is `evaluate_pair(*raw_original, bf16=bf16)`; the last is our numbers.
    """
    a0, b0 = raw_original
    a1, b1 = raw_ours
    n = len(a0)
    cos_orig = (l2_normalize(a0), l2_normalize(b0))
    cos_ours = (l2_normalize(a1), l2_normalize(b1))
    results = {
        "original": evaluate_pair(a0, b0, bf16=bf16),
        "float32": evaluate_pair(a0, b0, bf16=False),
        "cosine": evaluate_pair(*cos_orig, bf16=False),
        "special_tokens": evaluate_pair(*cos_ours, bf16=False),
        "ties_against": _ours_rung(*cos_ours, np.arange(n), block_size),
        "ours": _ours_rung(*cos_ours, targets, block_size),
    }
    same_text = a0 is a1 and b0 is b1
    return [dict(name=name, change=change + (" (no change here)" if same_text and name == "special_tokens" else ""),
                 **results[name]) for name, change in RUNGS]


def settings(*, bf16: bool, original_text_tokens: bool) -> dict:
    """What the original-protocol numbers were computed with (stored in metrics.json)."""
    return {"scores": "bfloat16" if bf16 else "float32", "features": "raw projections (not normalised)",
            "text_tokens": "without [CLS]/[SEP]" if original_text_tokens else "with [CLS]/[SEP]",
            "batch": ORIGINAL_BATCH, "unimol_padding": "original collater (batch max rounded up to 8)",
            "ranks": "stable descending sort, true partner = row i", "conformer": "first stored"}
