"""Training launcher: `python -m molbind_jax.training.train --config=experiments/configs/<name>.py --workdir=DIR`.

Every tower starts as `config.init` says: from the original's backbones (HF SciBERT directory,
Hu GIN .pth, Uni-Mol .pt; see molbind_jax/training/pretrained.py) or, when listed in `init.scratch`,
from random weights; anything else stops the start with an error.

Overrides use ml_collections syntax (`--config.total_steps=100 --config.checkpoint_every=20`);
variants are selected with `file.py:smoke`. Re-running the same command resumes from the
latest checkpoint in DIR/checkpoints (parameters, BatchNorm statistics, optimizer state and
step; the RNG and the input position are functions of the step), so a killed run is continued
by simply starting it again. A damaged newest checkpoint is reported, moved to
DIR/checkpoints/damaged/ and the next older one resumed (checkpoints.py); a config that differs
from DIR/config.json in more than run length and logging is refused with the changed keys
unless `--allow_config_change` (workdir.py).

What lands in DIR: `config.json` (the train config and the model config; export reads it),
`checkpoints/` (orbax, keep-N), `metrics.jsonl` and `tensorboard/` (scalars every
`log_every` steps, validation in-batch R@1 every `eval_every` steps, eval records carry
`"eval": true`), `train_summary.json` (wall time, step time, final losses and R@1).

Compiled programs are kept in JAX's persistent compilation cache (`--compile_cache`, default
the user cache ~/.cache/molbind_jax/jax_cache; compile_cache.py), so a re-run or a resume reads
them instead of compiling; the "compiled and ran step N" line says how many came from it.

Multi-host: `--distributed` (or JAX_COORDINATOR_ADDRESS in the environment) initialises
jax.distributed before any device is touched; see experiments/launch/ for TPU pod and SLURM
recipes. Every process runs this same program on its share of the global batch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Mapping

from absl import app, flags
from ml_collections import ConfigDict, config_flags



def _define_flags() -> None:
    # Defined only when run as a program, so that importing this module (tests, export) never
    # collides with other absl flag definitions.
    config_flags.DEFINE_config_file("config", None, "Training config file (experiments/configs/*.py).",
                                    lock_config=False)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json.")
    flags.DEFINE_bool("distributed", False, "Initialise jax.distributed (multi-host runs).")
    flags.DEFINE_string("compile_cache", None, "JAX persistent compilation cache: auto (the user cache, "
                        "$XDG_CACHE_HOME/molbind_jax/jax_cache), off, or a directory; default: "
                        "$MOLBIND_JAX_COMPILE_CACHE, else auto. A re-run reads its compiled programs from it.")
    flags.DEFINE_bool("allow_config_change", False, "Continue a run whose config.json differs from --config in "
                      "keys other than run length, logging and checkpointing (refused anyway when the saved "
                      "arrays do not fit the model).")


from molbind_jax.training.loop_parts import (  # noqa: E402,F401 - the loop's pieces, re-exported
    check_batches, describe_shapes, evaluate, pair_every_log_warning, shapes_signature, step_options,
    train_step_temperatures)

log = logging.getLogger("molbind_jax.training.train")


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/inf; the run stops and keeps its last good checkpoint."""


# ----------------------------------------------------------------------------------------------
# Model.


def model_config_from(config: ConfigDict, text_dir: str = ""):
    """MolBindConfig from `config.model`: a preset (`tiny`, `original`) plus nested overrides,
    with the text tower sized from the HF directory `text_dir` (the resolved `init.text`)."""
    from molbind_jax.modalities import spec
    from molbind_jax.models.molbind import MolBindConfig

    preset = config.model.preset
    base = getattr(MolBindConfig, preset)() if preset else MolBindConfig()
    d = base.to_dict()
    overrides = config.model.get("overrides", {}) or {}
    overrides = overrides.to_dict() if isinstance(overrides, ConfigDict) else dict(overrides)
    if overrides.get("modalities"):
        # Another set of towers: the preset's towers of the modalities left out are dropped
        # (from_dict refuses tower configs of modalities the model does not have).
        keep = set(overrides["modalities"])
        for m in base.modalities:
            if m not in keep:
                d.pop(spec(m).config_key, None)
    if text_dir and "bert" in d:
        from molbind_jax.convert.common import read_hf_config  # names the file / key of a bad value
        from molbind_jax.models.bert import BertConfig

        hf = dataclasses.asdict(BertConfig.from_hf_config(read_hf_config(text_dir)))
        d["bert"] = {**d["bert"], **{k: v for k, v in hf.items() if k in d["bert"] and k not in ("dtype", "param_dtype")},
                     "use_token_type": d["bert"].get("use_token_type", False)}
    _deep_update(d, overrides)
    return MolBindConfig.from_dict(d, base=base)


def _deep_update(d: dict, upd: Mapping) -> None:
    for k, v in (upd.to_dict() if isinstance(upd, ConfigDict) else dict(upd)).items():
        if isinstance(v, Mapping) and isinstance(d.get(k), dict):
            _deep_update(d[k], v)
        else:
            d[k] = v


def init_plan(config: ConfigDict):
    """The checked pair types and `config.init` block (pretrained.check) for the model's
    modalities: fails before anything is built."""
    from molbind_data import schema
    from molbind_jax.training import pretrained

    if config.model.get("text_init"):
        raise pretrained.InitError(f"model.text_init={config.model.text_init!r} is replaced by init.text "
                                   "(and init.graph / conformer / pocket / scratch); see docs/training.md")
    modalities = model_config_from(config).modalities
    pairs = schema.check_pairs(config.pairs)  # unknown names list the known ones
    lacking = {p: [m for m in schema.pair_type(p).modalities if m not in modalities] for p in pairs}
    lacking = {p: ms for p, ms in lacking.items() if ms}
    if lacking:
        raise ValueError(f"the trained pair types need towers the model does not have: {lacking} "
                         f"(model modalities {modalities}; add them to model.overrides.modalities)")
    return pretrained.check(config.get("init") or {}, modalities)


def build_model(config: ConfigDict):
    """(MolBind, MolBindConfig, text_dir): the model, every tower started as `config.init`
    says (pretrained backbones through molbind_jax/convert, or random weights for the towers
    in `init.scratch`); text_dir is the text tower's HF directory ("" from scratch)."""
    from flax import nnx

    from molbind_jax.training import pretrained
    from molbind_jax.models.molbind import MolBind

    plan = init_plan(config)
    mcfg = model_config_from(config, plan.text_dir)
    model = MolBind(mcfg, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    pretrained.load(model, plan)
    return model, mcfg, plan.text_dir


# ----------------------------------------------------------------------------------------------
# Epochs.

# The original's epoch is max(|2D-Text|, |3D-Protein|, |3D-2D|) examples: the 3D-Text set and
# the shorter ones wrap around (loader/pretrain_dataset.py 54-55, 57-60).
EPOCH_PAIRS = ("graph_text", "conformer_pocket", "graph_conformer")
# LAVIS warm-up length: min(len(train_loader), args.warmup_steps=1000) (model/run.py 50, 228).
WARMUP_CAP = 1000


def epoch_pairs(config: ConfigDict) -> list[str]:
    """The trained pairs whose train split defines an epoch (`config.epoch_pairs`)."""
    return [p for p in config.get("epoch_pairs", EPOCH_PAIRS) if p in config.pairs] or list(config.pairs)


def train_split_sizes(config: ConfigDict, pairs) -> dict[str, int]:
    """Training examples per pair type: the built dataset's train split sizes (TFDS metadata,
    no record is read), or the synthetic pool size."""
    if config.data.source == "synthetic":
        return {p: int(config.data.get("synthetic_pool", 256)) for p in pairs}
    if config.data.source != "tfds":
        raise ValueError(f"unknown data.source {config.data.source!r} (expected 'tfds' or 'synthetic')")
    import tensorflow_datasets as tfds

    try:  # registers the builder classes; a built dataset also opens from its files without them
        import molbind_data.molbind_pairs  # noqa: F401
    except ImportError:
        pass
    sizes = {}
    for p in pairs:
        name = f"{config.data.dataset}/{p}"
        try:
            splits = tfds.builder(name, data_dir=config.data.data_dir or None).info.splits
            sizes[p] = int(splits["train"].num_examples)
        except Exception as e:  # noqa: BLE001 - TFDS raises several types for a missing build
            raise FileNotFoundError(f"steps_per_epoch=-1 needs the built dataset {name} (data_dir="
                                    f"{config.data.data_dir or '$TFDS_DATA_DIR'}): {e}") from e
    return sizes


def epoch_lengths(config: ConfigDict, sizes: Mapping[str, int]) -> dict[str, int]:
    """{"micro_steps", "steps"} of one epoch: the longest epoch pair's train split in
    micro-batches (drop_last, as the original's loader), then optimizer updates (a partial
    accumulation at the end of an epoch still steps, as Lightning does)."""
    from molbind_jax.training import train_inputs

    pairs = epoch_pairs(config)
    batch, every = train_inputs.pair_batch_sizes(config, pairs), train_inputs.pair_every(config, pairs)
    micro = max((int(sizes[p]) // batch[p]) * every[p] for p in pairs)
    if micro < 1:
        raise ValueError(f"the train splits {dict(sizes)} hold less than one batch {batch} of {pairs}")
    return {"micro_steps": micro, "steps": -(-micro // int(config.accumulate_steps))}


def resolve_epochs(config: ConfigDict) -> dict[str, int] | None:
    """Fills in what the config asks to derive from the data, in place: `steps_per_epoch=-1`
    (optimizer updates per epoch), `total_steps=-1` (`num_epochs` epochs) and, with them, a
    warm-up of -1 (min(micro-batches per epoch, 1000), the original's rule). Returns the
    epoch lengths, or None when the config gives every number itself."""
    if int(config.steps_per_epoch) >= 0 and int(config.total_steps) >= 0:
        return None
    lengths = epoch_lengths(config, train_split_sizes(config, epoch_pairs(config)))
    if int(config.steps_per_epoch) < 0:
        config.steps_per_epoch = lengths["steps"]
        if int(config.lr.warmup_steps) < 0:
            config.lr.warmup_steps = min(lengths["micro_steps"], WARMUP_CAP)
    if int(config.total_steps) < 0:
        epochs = int(config.get("num_epochs", 0))
        if epochs < 1:
            raise ValueError("total_steps=-1 needs num_epochs >= 1")
        config.total_steps = epochs * int(config.steps_per_epoch)
    return lengths


# ----------------------------------------------------------------------------------------------
# Pieces of the loop.


def make_schedule(config: ConfigDict):
    from molbind_jax.training.train_step import lr_schedule

    if int(config.steps_per_epoch) < 0 or int(config.total_steps) < 0:
        raise ValueError("steps_per_epoch / total_steps of -1 are derived from the data: call resolve_epochs first")
    spe = int(config.steps_per_epoch) or int(config.total_steps)
    warmup = int(config.lr.warmup_steps)
    if warmup < 0:
        # The original: min(len(train_loader), 1000) where the loader length counts micro-batches
        # while the LAVIS step counts optimizer updates (model/run.py 50, 185).
        warmup = min(spe * int(config.get("accumulate_steps", 1)), WARMUP_CAP)
    return lr_schedule(peak_lr=config.lr.peak, warmup_lr=config.lr.warmup_init, min_lr=config.lr.min,
                       warmup_steps=warmup, total_steps=config.total_steps, steps_per_epoch=spe,
                       cosine_per_epoch=bool(config.lr.cosine_per_epoch))


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The run.


def _ensure_data(config: ConfigDict) -> None:
    """Finds the TFDS dataset (molbind_data.build.resolve_data_dir, the rule evaluation uses too):
    molbind_mini is built on first use unless `data.build_if_missing` is False; a user's
    dataset (molbind_pairs, molbind_m4) that is not built stops the run with the build command.
    The resolved data_dir lands in config.json, where evaluation finds it."""
    if config.data.source == "tfds":
        from molbind_data.build import resolve_data_dir

        config.data.data_dir = resolve_data_dir(config.data.dataset, config.data.data_dir or None, config.pairs,
                                                build_if_missing=config.data.get("build_if_missing", True),
                                                data_dir_flag="--config.data.data_dir")


def train_and_evaluate(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the summary written to train_summary.json.
    A changed config on a run with checkpoints is refused unless its changes are safe or
    `allow_config_change` (molbind_jax/training/workdir.py)."""
    import jax
    import numpy as np
    from tqdm import tqdm

    from molbind_jax.data import batching
    from molbind_jax.training import sharding, train_inputs
    from molbind_jax.training import text_cache_run as text_cache
    from molbind_jax.training.compile_cache import CacheCounter
    from molbind_jax.training import workdir as run_dir
    from molbind_jax.training.checkpoints import CheckpointMismatchError, Checkpointer
    from molbind_jax.training.metric_writer import MetricWriter
    from molbind_jax.training.train_step import TrainStep, make_optimizer, param_labels

    t_start = time.time()
    cache_counter = CacheCounter()  # JAX's persistent cache events (when --compile_cache is on)
    batching.reset_skipped_records()  # counts this run's input records with NaN/inf (batching.py)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    summary_path = os.path.join(workdir, "train_summary.json")
    init_plan(config)  # a wrong init block fails now, before data or model are touched
    if int(config.steps_per_epoch) < 0 or int(config.total_steps) < 0:
        _ensure_data(config)
        lengths = resolve_epochs(config)
        log.info("epoch from the train splits: %d micro-batches, %d updates; total_steps %d, warm-up %d",
                 lengths["micro_steps"], config.steps_per_epoch, config.total_steps, config.lr.warmup_steps)
    probe = Checkpointer(os.path.join(workdir, "checkpoints"))
    done = probe.latest_step()
    probe.close()
    # The config of this start against the one the run was trained with: safe changes (a
    # longer total_steps extends a finished run) continue, others stop here (workdir.py).
    changes = run_dir.check_config(workdir, config.to_dict(), allow_change=allow_config_change,
                                   has_checkpoint=done is not None)
    if changes:
        log.warning("config changes on %s: %s", workdir, run_dir.describe(changes))
    if done is not None and done >= int(config.total_steps):
        # A finished run: re-running the command is a no-op (and keeps the measured summary).
        log.info("run in %s is complete (step %d of %d); nothing to do", workdir, done, config.total_steps)
        if os.path.exists(summary_path):
            with open(summary_path, encoding="utf-8") as f:
                return json.load(f)
        return {"start_step": done, "total_steps": int(config.total_steps), "wall_time_s": 0.0,
                "mean_step_time_s": None, "final_eval": {}}
    _ensure_data(config)

    warning = pair_every_log_warning(config)
    if warning:
        log.warning("%s", warning)
    mesh = sharding.make_mesh(int(config.num_devices) or None)
    model, mcfg, text_dir = build_model(config)
    opts = step_options(config)
    schedule = make_schedule(config)
    # A labels function (not a tree): it also labels the layout of checkpoints written before the
    # frozen towers left the trainable state, which the restore below converts.
    labels = functools.partial(param_labels, frozen=tuple(config.frozen))
    tx = make_optimizer(schedule, weight_decay=config.weight_decay, labels=labels,
                        grad_clip_norm=float(config.grad_clip_norm) or None)
    train_step = TrainStep(model, tx, mesh, opts)
    state = train_step.init_state(model)
    text_vocab = mcfg.tower("text").vocab_size if "text" in mcfg.modalities else 0
    del model  # the state now owns the parameters

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=int(config.keep_checkpoints))
    try:
        # A damaged newest step is reported and moved aside; an older layout is converted.
        resumed = ckpt.restore_intact(state, legacy=train_step.legacy_layout)
    except CheckpointMismatchError as e:
        ckpt.close()
        raise CheckpointMismatchError(f"{e} Config changes: {run_dir.describe(changes) or 'none recorded'}") from e
    start = 0
    if resumed:
        start, state, meta = resumed
        log.info("resumed from step %d (%s)", start, ckpt.directory)
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, "config.json"),
                    {"train": config.to_dict(), "model": mcfg.to_dict(), "text_dir": text_dir,
                     "dataset": config.data.dataset, "data_source": config.data.source})
    writer = MetricWriter(workdir, tensorboard=bool(config.tensorboard), resume_step=start)

    accum = int(config.accumulate_steps)
    total = int(config.total_steps)
    cache = None
    if text_cache.enabled(config):  # a locked text tower: its output read from the cache (text_cache.py)
        cache = text_cache.for_training(config, train_step.merged_model(state), text_dir)
    batches = train_inputs.micro_batches(config, split="train", start=start * accum, train=True,
                                         text_vocab=text_vocab, mesh=mesh,
                                         records=text_cache.records_for(cache, config, "train"))
    eval_sets = {}
    if config.eval_every and config.eval_batches:
        eval_records = text_cache.records_for(cache, config, "validation") or {}
        eval_sets = {p: train_inputs.eval_batches(config, p, text_vocab=text_vocab,
                                                  num_batches=int(config.eval_batches), mesh=mesh,
                                                  records=eval_records.get(p))
                     for p in config.pairs}
    every = train_inputs.pair_every(config)
    sizes = train_inputs.pair_batch_sizes(config)
    pairs_per_step = sum(accum * sizes[p] / every[p] for p in config.pairs)  # on average
    meta = {"seed": int(config.seed), "accumulate_steps": accum, "model": mcfg.to_dict()}

    last_eval, step_times, last, skipped_total = {}, [], None, 0
    t_log, steps_since_log = time.time(), 0
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if jax.process_index() == 0 else (lambda msg: None)
    seen_shapes: set = set()
    bar = None  # made after the first step: its rate and ETA leave the first compile out
    step = start
    try:
        while step < total:
            t0 = time.time()
            micro_local = []
            for _ in range(accum):
                local = next(batches)
                check_batches(local, mcfg)
                micro_local.append(local)
            # Programs are compiled per pair and shape (one per step's shapes when fused).
            signature = shapes_signature(micro_local)
            keys = {signature} if config.fused_step else {pair for micro_sig in signature for pair in micro_sig}
            compiling = not keys <= seen_shapes
            if compiling:  # a new program: minutes at full size, say so before it starts
                seen_shapes |= keys
                cache_before = cache_counter.snapshot()
                say(f"compiling the train step ({accum} micro-batch{'es' if accum > 1 else ''}) for step "
                    f"{step + 1}, shapes {describe_shapes(micro_local)} ...")
            micro = [{p: train_inputs.to_global(b, mesh) for p, b in local.items()} for local in micro_local]
            state, m = train_step(state, micro)
            # One scalar per step crosses to the host: a non-finite step left the state unchanged
            # (finite guard in the update) and must stop the run before anything is saved.
            if not bool(m["finite"]):
                losses = {k: float(v) for k, v in m.items() if k.startswith("loss")}
                raise NonFiniteLossError(
                    f"non-finite loss at step {step + 1}: {losses}. The update was not applied and nothing "
                    f"was saved; the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. "
                    "Lower the learning rate or check the input batch, then re-run the command to resume.")
            if compiling:
                cached = cache_counter.describe(since=cache_before)
                say(f"compiled and ran step {step + 1} in {time.time() - t0:.1f} s "
                    f"({len(seen_shapes)} pair/shape program{'s' if len(seen_shapes) > 1 else ''} so far"
                    f"{'; ' + cached if cached else ''})")
            step += 1
            step_times.append(time.time() - t0)
            steps_since_log += 1
            if bar is None:
                bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
                           disable=jax.process_index() != 0 or not config.progress_bar)
            else:
                bar.update(1)
            if step % config.log_every == 0 or step == total:
                dt = time.time() - t_log
                scalars = {k: v for k, v in m.items() if k != "finite"}
                scalars["learning_rate"] = schedule(step - 1)
                for p, t in train_step_temperatures(train_step, state).items():
                    scalars[f"temperature/{p}"] = t
                scalars["steps_per_sec"] = steps_since_log / dt
                scalars["pairs_per_sec"] = steps_since_log * pairs_per_step / dt
                skipped = batching.skipped_records()
                if sum(skipped.values()) > skipped_total:  # records with NaN/inf inputs, never trained on
                    skipped_total = sum(skipped.values())
                    log.warning("skipped %d records with non-finite inputs so far: %s", skipped_total, skipped)
                scalars["skipped_records"] = skipped_total  # an int: metrics.jsonl, not a TensorBoard scalar
                last = writer.write(step, scalars)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                t_log, steps_since_log = time.time(), 0
            if eval_sets and (step % config.eval_every == 0 or step == total):
                last_eval = evaluate(train_step, state, eval_sets, mesh)
                writer.write(step, last_eval, eval=True)
                bar.write(f"step {step} validation in-batch R@1: " +
                          ", ".join(f"{k[3:]}={v:.3f}" for k, v in last_eval.items() if k.startswith("r1/")))
            if step % config.checkpoint_every == 0 and step < total:
                ckpt.save(step, state, {**meta, "step": step, "input_position": step * accum}, force=True)
            if step == config.debug_kill_at_step:
                # Test hook: die like a preempted job (no cleanup, no final save).
                os.kill(os.getpid(), signal.SIGKILL)
        if ckpt.latest_step() != total:
            ckpt.save(total, state, {**meta, "step": total, "input_position": total * accum}, force=True)
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()  # waits for pending async saves
        writer.close()

    measured = step_times[min(2, len(step_times) - 1):] if step_times else []
    summary = {
        "start_step": start,
        "total_steps": total,
        "wall_time_s": time.time() - t_start,
        "steps_run": len(step_times),
        "mean_step_time_s": float(np.mean(measured)) if measured else None,
        "first_step_time_s": step_times[0] if step_times else None,
        "final": last,
        "final_eval": last_eval,
        "skipped_records": batching.skipped_records(),  # {pair/field: count}, non-finite inputs
        # Programs this process asked JAX's persistent cache for, read from it and compiled.
        "compilation_cache": {"dir": jax.config.jax_compilation_cache_dir, **cache_counter.snapshot()},
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
    }
    if jax.process_index() == 0:
        _write_json(summary_path, summary)
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from molbind_jax.training import compile_cache, pretrained, sharding
    from molbind_jax.training import workdir as run_dir

    FLAGS = flags.FLAGS
    sharding.maybe_initialize_distributed(FLAGS.distributed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cache_dir = compile_cache.enable(FLAGS.compile_cache)  # before anything compiles
    except ValueError as e:
        raise app.UsageError(str(e))
    log.info("compilation cache: %s", cache_dir or "off")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    config = run_dir.config_from_flag(FLAGS)
    if FLAGS.workdir is None or config is None:
        raise app.UsageError("--config and --workdir are required")
    try:
        summary = train_and_evaluate(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    except NonFiniteLossError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(3)
    except pretrained.InitError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: summary[k] for k in ("total_steps", "wall_time_s", "mean_step_time_s", "final_eval")},
                     default=str))


def cli():
    """The `molbind-train` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    _define_flags()
    cli_run(main)


if __name__ == "__main__":
    cli()
