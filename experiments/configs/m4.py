r"""MolBind-M4 as in the original, for accelerators (spec section 2).

Full sizes (SciBERT-sized text tower without token types and with the [DEC] row, 5 x 300 GIN
with (0,0) self-loops, two 15 x 512 Uni-Mol towers, 512-d embeddings, the original's padded
mean pooling); per-GPU batch 96 x 4 GPUs = global 384 per pair type, gradient accumulation 4;
fixed tau 0.1; weights 0.25; AdamW lr 1e-4, wd 0.05; warm-up from 1e-6 over
min(steps_per_epoch, 1000) steps, cosine to 1e-5 once per epoch (LAVIS); bf16 matmuls with
float32 parameters and loss math (the original trains under bf16 autocast).

Initialise the towers from the original backbones with molbind_jax/convert (SciBERT HF
directory via `model.text_init=/path/to/scibert`). The MolBind4M data is not downloadable
here: build `molbind_pairs` from your copy (data_pipeline/build.py --source=m4) and set
`data.dataset`/`data.data_dir`.

Single host, all local accelerators:

  .venv/bin/python -m molbind_jax.training.train --config=experiments/configs/m4.py --workdir=gs://.../m4 \
      --config.data.data_dir=/data/tfds

Multi-host: see experiments/launch/ (TPU pod slices, SLURM); add --distributed.
`m4.py:smoke` keeps the hyper-parameters but uses tiny towers and synthetic data.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_config  # noqa: E402


def get_config(arg: str | None = None):
    c = base_config()
    c.batch_size = 96 * 4  # global per pair type: 96 per GPU x 4 GPUs
    c.accumulate_steps = 4
    c.temperature = 0.1
    c.learn_temperature = False
    c.gather_gradient = True  # False reproduces the original's no-grad all_gather
    c.lr = dict(peak=1e-4, warmup_init=1e-6, min=1e-5, warmup_steps=-1, cosine_per_epoch=True)
    c.weight_decay = 0.05
    c.steps_per_epoch = 2600  # optimizer updates per epoch; set from your dataset size
    c.total_steps = 2600 * 10
    c.model.preset = "original"
    c.model.text_init = ""
    c.model.overrides = dict(dtype="bfloat16")
    c.data.source = "tfds"
    c.data.dataset = "molbind_m4"
    c.data.build_if_missing = False
    c.loss_chunk_size = 0
    c.log_every = 50
    c.eval_every = 1000
    c.eval_batches = 16
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    if arg == "smoke":
        c.model.preset = "tiny"
        c.model.overrides = dict(embed_dim=16)
        c.batch_size = 16
        c.accumulate_steps = 2
        c.total_steps = 6
        c.steps_per_epoch = 3
        c.log_every = 1
        c.eval_every = 3
        c.eval_batches = 1
        c.checkpoint_every = 3
        c.data.source = "synthetic"
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (expected smoke)")
    return c
