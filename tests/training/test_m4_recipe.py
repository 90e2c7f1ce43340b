"""The m4 recipe (experiments/configs/m4.py): the original's numbers, its epoch, and its
learning-rate schedule against a direct implementation of LAVIS' LinearWarmupCosineLRScheduler
as the original's Lightning loop steps it."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from molbind_jax.training import train
from molbind_jax.training.pretrained import InitError

PAIRS = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")  # the original's four
from lavis_reference import LavisLinearWarmupCosine, original_update_rates
from smoke_configs import m4_config


def test_m4_holds_the_original_numbers():
    c = m4_config()
    assert c.model.preset == "original" and c.model.overrides.dtype == "bfloat16"
    assert (c.batch_size, c.accumulate_steps) == (96 * 4, 4)
    assert c.temperature == 0.1 and not c.learn_temperature
    assert dict(c.loss_weights) == {p: 0.25 for p in PAIRS} and tuple(c.pairs) == PAIRS
    assert dict(c.lr) == dict(peak=1e-4, warmup_init=1e-6, min=1e-5, warmup_steps=-1, cosine_per_epoch=True)
    assert c.weight_decay == 0.05 and c.grad_clip_norm == 0.0
    assert (c.num_epochs, c.total_steps, c.steps_per_epoch) == (100, -1, -1)
    assert tuple(c.epoch_pairs) == ("graph_text", "conformer_pocket", "graph_conformer")
    assert c.gather_gradient and not m4_config("parity").gather_gradient
    # parity = the original's loss: also no duplicate masking (on by default everywhere else)
    assert c.duplicate_aware and not m4_config("parity").duplicate_aware
    assert not m4_config("readme,parity").duplicate_aware
    assert m4_config("readme").batch_size == 16 * 4 and m4_config("readme,parity").batch_size == 64
    assert (c.dryrun.text_len, c.dryrun.mol_atoms, c.dryrun.pocket_atoms) == (256, 64, 264)
    mcfg = train.model_config_from(c)
    assert (mcfg.gin.num_layers, mcfg.gin.emb_dim, mcfg.conformer.num_layers, mcfg.conformer.embed_dim,
            mcfg.conformer.num_heads, mcfg.pocket.vocab_size, mcfg.embed_dim) == (5, 300, 15, 512, 64, 10, 512)
    assert mcfg.unimol_pooling == "original" and mcfg.dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        m4_config("fast")


def test_m4_refuses_to_start_without_backbones():
    with pytest.raises(InitError, match=r"\['text', 'graph', 'conformer', 'pocket'\] have no pretrained weights"):
        train.init_plan(m4_config())
    assert train.init_plan(m4_config("smoke")).scratch == ("text", "graph", "conformer", "pocket")


# ------------------------------------------------------------------------------- the epoch


def test_epoch_is_the_longest_of_the_three_original_sets():
    c = m4_config()
    c.batch_size = 64
    sizes = {"graph_text": 1000, "conformer_text": 50_000, "conformer_pocket": 130, "graph_conformer": 300}
    # conformer_text is not an epoch pair (it wraps around in the original): 1000 // 64 = 15.
    assert train.epoch_lengths(c, sizes) == {"micro_steps": 15, "steps": 4}  # ceil(15 / 4)
    c.pair_every.conformer_pocket = 10  # 130 // 64 = 2 batches, one every 10th micro-step
    assert train.epoch_lengths(c, sizes)["micro_steps"] == 20
    c.pairs = ("conformer_text",)  # no epoch pair trained: the trained pairs define it
    assert train.epoch_lengths(c, sizes) == {"micro_steps": 781, "steps": 196}
    with pytest.raises(ValueError, match="less than one batch"):
        train.epoch_lengths(c, {"conformer_text": 10})


def _synthetic(pool, *, batch=16, accum=4, epochs=3):
    c = m4_config("smoke")
    c.batch_size, c.accumulate_steps = batch, accum
    c.data.synthetic_pool = pool
    c.steps_per_epoch, c.total_steps, c.num_epochs = -1, -1, epochs
    c.lr.warmup_steps = -1
    return c


def test_resolve_epochs_from_the_train_splits():
    c = _synthetic(160)
    assert train.resolve_epochs(c) == {"micro_steps": 10, "steps": 3}
    assert (c.steps_per_epoch, c.total_steps, c.lr.warmup_steps) == (3, 9, 10)
    assert train.resolve_epochs(c) is None  # nothing left to derive
    with pytest.raises(ValueError, match="call resolve_epochs first"):
        train.make_schedule(_synthetic(160))
    c = _synthetic(160, epochs=0)
    with pytest.raises(ValueError, match="needs num_epochs"):
        train.resolve_epochs(c)
    # A hand-typed epoch keeps the original's warm-up rule in micro-batches: min(4 x 3, 1000).
    c = m4_config("smoke")
    c.steps_per_epoch, c.total_steps, c.accumulate_steps = 3, 30, 4
    s = train.make_schedule(c)
    assert float(s(2)) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 2 / 12, rel=1e-5)


@pytest.mark.slow  # TensorFlow start-up and a tiny TFDS build
def test_split_sizes_come_from_the_built_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    sizes = {"graph_text": 70, "conformer_pocket": 20, "graph_conformer": 45}

    class MolbindEpochTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=p) for p in sizes]

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"x": tfds.features.Tensor(shape=(), dtype=np.int32)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(sizes[self.builder_config.name]),
                    "validation": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                yield str(i), {"x": i}

    for p in sizes:
        tfds.builder(f"molbind_epoch_test/{p}", data_dir=str(tmp_path)).download_and_prepare()
    c = m4_config()
    c.data.dataset, c.data.data_dir, c.batch_size = "molbind_epoch_test", str(tmp_path), 8
    assert train.train_split_sizes(c, list(sizes)) == sizes
    assert train.resolve_epochs(c) == {"micro_steps": 8, "steps": 2}  # 70 // 8, then / accumulate 4
    assert (c.steps_per_epoch, c.total_steps, c.lr.warmup_steps) == (2, 200, 8)
    c.data.dataset = "molbind_not_built"
    with pytest.raises(FileNotFoundError, match="needs the built dataset molbind_not_built/graph_text"):
        train.train_split_sizes(c, ["graph_text"])


# ------------------------------------------------------------------- the LAVIS schedule


@pytest.mark.parametrize("micro_per_epoch,accumulate,epochs", [
    (10, 4, 5),  # warm-up (10 updates) longer than the epoch (3 updates): cut at the epoch's end
    (12, 1, 4),  # warm-up = the whole first epoch
    (1200, 4, 3),  # the 1000 cap: 1000 warm-up updates, 300 per epoch
    (1500, 1, 2),  # the warm-up (1000) ends inside epoch 0 (1500 updates): the peak holds until its end
])
def test_schedule_equals_lavis_in_the_original_loop(micro_per_epoch, accumulate, epochs):
    c = _synthetic(micro_per_epoch * 16, accum=accumulate, epochs=epochs)
    train.resolve_epochs(c)
    want = original_update_rates(micro_per_epoch, accumulate, epochs)
    assert c.total_steps == len(want)
    got = np.asarray(train.make_schedule(c)(np.arange(len(want))))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


def test_schedule_holds_the_peak_when_the_warmup_ends_inside_epoch_0():
    c = ml_collections.ConfigDict(dict(steps_per_epoch=50, total_steps=200, accumulate_steps=1,
                                       lr=dict(peak=1e-4, warmup_init=1e-6, min=1e-5, warmup_steps=10,
                                               cosine_per_epoch=True)))
    s = train.make_schedule(c)
    want = np.asarray([lavis_rate(k // 50, k) for k in range(200)])
    np.testing.assert_allclose(np.asarray(s(np.arange(200))), want, rtol=2e-6)
    assert float(s(10)) == pytest.approx(1e-4) and float(s(49)) == pytest.approx(1e-4)


def lavis_rate(epoch, step, warmup=10, epochs=4):
    """One call of the scheduler above."""
    sched = LavisLinearWarmupCosine(epochs, 1e-5, 1e-4, warmup, 1e-6)
    sched.step(epoch, step)
    return sched.lr
