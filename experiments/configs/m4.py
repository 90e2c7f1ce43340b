r"""MolBind-M4: the original recipe (github.com/MolBind/Code, commit 562e44f), for accelerators.

Every number below carries the original file and line it comes from. The towers start from the
original's backbones (model/bind.py 52-54, 66-67, 79-82, 93-96), given by flag; without them
the start fails (listing the towers) unless `init.scratch` names them:

  .venv/bin/python -m molbind_jax.training.train --config=experiments/configs/m4.py --workdir=gs://.../m4 \
      --config.init.text=/ckpts/scibert_scivocab_uncased \
      --config.init.graph=/ckpts/graph_pretrain.pth \
      --config.init.conformer=/ckpts/mol_pretrain.pt \
      --config.init.pocket=/ckpts/protein_pretrain.pt \
      --config.init.conformer_dictionary=/ckpts/unimol_dict_mol.txt \
      --config.init.pocket_dictionary=/ckpts/unimol_dict_pro.txt \
      --config.data.data_dir=/data/tfds

(experiments/launch/ wraps this for TPU pods, SLURM and explicit multi-node; BACKBONE_DIR
there holds the files above.) The MolBind4M data is not downloadable here: build
`molbind_m4` from your copy (data_pipeline/build.py --source=m4). An epoch is the original's
(the longest of 2D-Text, 3D-Protein, 3D-2D, the rest wrapping around), derived from the built
train splits at start (`steps_per_epoch=-1`), and the run lasts 100 of them.

Check the memory and FLOPs of a pod recipe first, on a CPU, without data or backbones:

  .venv/bin/python -m molbind_jax.training.dryrun --config=experiments/configs/m4.py --devices=4

Variants (comma-separated, e.g. `m4.py:readme,parity`):
  parity  the original's loss exactly: no-gradient all-gather (`gather_gradient=False`) and
          no duplicate masking (`duplicate_aware=False`)
  readme  the README's command: 16 per GPU instead of 96
  smoke   tiny towers, synthetic pairs, 6 steps (no backbones, no data)
Where we differ from the original on purpose (defaults): the gradient flows through the gather
(see `parity`), rows holding the same molecule, text or protein are not negatives of each other
(`duplicate_aware`, see `parity`), a global batch fixed whatever the device count (384 = 96 x 4
GPUs).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_config  # noqa: E402

GPUS = 4  # pretrain.py 75: devices='0,1,2,3' (DDPSpawn, pretrain.py 47-48)


def get_config(arg: str | None = None):
    c = base_config()
    c.seed = 42  # model/run.py 213 (pl.seed_everything, pretrain.py 34)

    # Towers and sizes: MolBindConfig.original() is SciBERT without token types with the [DEC]
    # row (bind.py 24-29, 43-54; contrastive.py 80), a 5 x 300 GIN without dropout
    # (run.py 206-208; bind.py 59-65), two 15 x 512 Uni-Mol towers with FFN 2048, 64 heads,
    # 128 Gaussian kernels, dropouts 0.1/0.1/0.1/0.0 (model/unimol.py 19-64, 100), 512-d
    # projections (run.py 220; contrastive.py 87-91) and the padded-mean Uni-Mol pooling
    # (contrastive.py 154-167). The text tower is re-sized from init.text's config.json.
    c.model.preset = "original"
    # bf16 matmuls, float32 parameters and loss: the original trains under precision='bf16'
    # autocast (pretrain.py 76).
    c.model.overrides = dict(dtype="bfloat16")
    c.init.scratch = ()  # every tower from its backbone: paths by flag (see the docstring)

    # Loss: fixed temperature 0.1 for every pair (run.py 202; contrastive.py 93-95), weights
    # 0.25 on each of the four pairs (contrastive.py 186-190). The original gathers without
    # gradient (contrastive.py 34-42): the `parity` variant.
    c.temperature = 0.1
    c.learn_temperature = False
    c.loss_weights = {p: 0.25 for p in c.pairs}
    c.gather_gradient = True
    # The original treats every other row as a negative, also one holding the same molecule,
    # text or protein (plain cross-entropy over the gathered batch, model/contrastive.py);
    # `parity` turns the duplicate masking off.
    c.duplicate_aware = True

    # Batch: 96 per GPU (loader/dataloader.py 195) x 4 GPUs = 384 per pair type per micro-step,
    # gradient accumulation 4 (pretrain.py 78): 1536 pairs of each type per update.
    c.batch_size = 96 * GPUS
    c.accumulate_steps = 4

    # AdamW lr 1e-4, weight decay 0.05 on every parameter (run.py 51, 224-225); LAVIS
    # LinearWarmupCosineLRScheduler (run.py 53, 230): warm-up from 1e-6 (run.py 227) over
    # min(micro-batches per epoch, 1000) updates (run.py 50, 228; warmup_steps=-1), then a
    # cosine per epoch to 1e-5 (run.py 226) over max_epochs=100 (pretrain.py 77).
    c.lr = dict(peak=1e-4, warmup_init=1e-6, min=1e-5, warmup_steps=-1, cosine_per_epoch=True)
    c.weight_decay = 0.05
    c.grad_clip_norm = 0.0  # Lightning's default gradient_clip_val=None: no clipping
    c.num_epochs = 100  # pretrain.py 77
    c.total_steps = -1  # num_epochs x steps_per_epoch
    # The epoch: max(|2D-Text|, |3D-Protein|, |3D-2D|) examples (loader/pretrain_dataset.py 54-55),
    # whole batches only (drop_last=True, loader/dataloader.py 172), from the built splits.
    c.steps_per_epoch = -1
    c.epoch_pairs = ("graph_text", "conformer_pocket", "graph_conformer")

    c.data.source = "tfds"
    c.data.dataset = "molbind_m4"
    c.data.build_if_missing = False
    # In-batch validation retrieval over 64 candidates (match_batch_size, loader/dataloader.py 196).
    c.eval_batch_size = 64
    c.eval_batches = 16
    c.eval_every = 1000
    c.log_every = 50
    c.checkpoint_every = 1000  # the original saves every 10 epochs (run.py 233); ours resumes
    c.keep_checkpoints = 3
    c.loss_chunk_size = 0

    # The dry run's abstract batch (molbind_jax/training/dryrun.py): text padded to max_length=256
    # (dataloader.py 201; pretrain_dataset.py 115-125), molecules of up to 62 heavy atoms +
    # [CLS]/[SEP] = 64 tokens, pockets of 256 atoms (unimol_max_atoms, model/unimol.py 75) + 2,
    # padded to a multiple of 8 = 264 (the collater's rule), graphs of 62 nodes / 136 directed edges.
    c.dryrun = dict(text_len=256, mol_atoms=64, pocket_atoms=264, graph_nodes=62, graph_edges=136)

    for variant in [v for v in (arg or "").split(",") if v]:
        if variant == "parity":
            c.gather_gradient = False
            c.duplicate_aware = False
        elif variant == "readme":
            c.batch_size = 16 * GPUS  # README.md 30: --batch_size 16 on 4 devices
        elif variant == "smoke":
            c.model.preset = "tiny"
            # The tiny preset's 64-row text table: this variant checks the recipe's programs (dry
            # run, pretrained init with tiny backbones), whose sizes a 30,522-row table would
            # dominate. It is not meant for export (one would need --tokenizer with <= 64 ids; a
            # larger tokenizer is refused): mini.py:smoke is the exportable smoke run.
            c.model.overrides = dict(embed_dim=16)
            c.init.scratch = ("text", "graph", "conformer", "pocket")
            c.batch_size = 16
            c.accumulate_steps = 2
            c.num_epochs = 2
            c.steps_per_epoch = 3
            c.total_steps = 6
            c.lr.warmup_steps = -1
            c.log_every = 1
            c.eval_every = 3
            c.eval_batches = 1
            c.eval_batch_size = 16
            c.checkpoint_every = 3
            c.data.source = "synthetic"
            c.dryrun = dict(text_len=32, mol_atoms=16, pocket_atoms=24, graph_nodes=12, graph_edges=26)
        else:
            raise ValueError(f"unknown variant {variant!r} (expected parity, readme, smoke, comma-separated)")
    return c
