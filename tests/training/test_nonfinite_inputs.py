"""Non-finite inputs are taken out where they enter (collation), counted, never repaired:
a NaN conformer coordinate never reaches a model, so it can never reach an update."""
from __future__ import annotations

import numpy as np
import pytest

from molbind_jax.data import batching, synthetic


def _records(pair, n=8):
    return [synthetic.record(pair, i, text_vocab=64) for i in range(n)]


def _leaves(batch):
    return [np.asarray(a) for side in (batch.x, batch.y) for a in side]


@pytest.fixture(autouse=True)
def _fresh_counts():
    batching.reset_skipped_records()
    yield
    batching.reset_skipped_records()


def test_nan_coordinate_record_is_masked_out_and_counted():
    recs = _records("conformer_pocket")
    bad = dict(recs[3])
    coords = np.array(bad["conformer_coords"], dtype=np.float32)
    coords[..., 1, 2] = np.nan  # one atom of the (every) stored conformer
    bad["conformer_coords"] = coords
    recs[3] = bad
    b = batching.collate_pair("conformer_pocket", recs, batch_size=8, num_shards=2)
    assert all(np.isfinite(a).all() for a in _leaves(b) if a.dtype.kind == "f")
    assert b.mask.tolist() == [True, True, True, False, True, True, True, True]
    # The skipped row is a copy of a good one, not the bad record with its NaN zeroed.
    assert np.array_equal(b.x.coords[3], b.x.coords[0])
    assert batching.skipped_records() == {"conformer_pocket/conformer_coords": 1}


def test_inf_pocket_coordinate_and_the_input_stream(monkeypatch):
    # The launcher's synthetic stream goes through the same collation.
    real = synthetic.record

    def record(pair, idx, *, text_vocab):
        r = dict(real(pair, idx, text_vocab=text_vocab))
        if idx == 5 and pair == "conformer_pocket":
            c = np.array(r["pocket_coords"], np.float32)
            c[0, 0] = np.inf
            r["pocket_coords"] = c
        return r

    monkeypatch.setattr(synthetic, "record", record)
    b = synthetic.pair_batch("conformer_pocket", range(8), num_local_shards=2, text_vocab=64)
    assert all(np.isfinite(a).all() for a in _leaves(b) if a.dtype.kind == "f")
    assert not b.mask[5] and b.mask.sum() == 7
    assert batching.skipped_records() == {"conformer_pocket/pocket_coords": 1}


def test_a_batch_with_no_finite_record_names_the_field():
    recs = []
    for r in _records("conformer_text", 2):
        r = dict(r)
        r["conformer_coords"] = np.full_like(np.asarray(r["conformer_coords"], np.float32), np.nan)
        recs.append(r)
    with pytest.raises(batching.NonFiniteInputError, match="conformer_text.*conformer_coords"):
        batching.collate_pair("conformer_text", recs)


def test_embedding_users_records_refuses_nan_rows():
    recs = [dict(r) for r in _records("conformer_text", 2)]
    c = np.array(recs[1]["conformer_coords"], np.float32)
    c[..., 0] = np.nan
    recs[1]["conformer_coords"] = c
    with pytest.raises(batching.NonFiniteInputError, match=r"conformer record 1 .*conformer_coords"):
        batching.collate_modality("conformer", recs)
