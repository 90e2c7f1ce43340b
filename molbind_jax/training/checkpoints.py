"""Training checkpoints: orbax CheckpointManager, periodic and final, atomic, keep-N.

A checkpoint holds everything a resumed run needs to continue bit for bit: the train state of
`train_step.TrainStep` (step, trainable params incl. a learnable temperature, BatchNorm
statistics, optimizer state) and a small JSON record (step, input position, seed, model
config). The RNG is not stored separately: dropout keys and the input order are pure functions
of (seed, step), so restoring the step restores them.

Orbax writes each step into a temporary directory and renames it when complete, so a run that
is killed mid-save leaves the previous checkpoint as the latest one. Saves are asynchronous;
`close()` (or `wait_until_finished()`) must run before the process exits.

A checkpoint damaged on disk after it was written (a truncated or garbled file, zeroed bytes, a
lost metadata file) is found when a resumed run reads it: `restore_intact` reports it on one
line, moves it aside to `<checkpoints>/damaged/<step>` (kept for inspection, never read again)
and falls back to the next older checkpoint. A checkpoint whose arrays do not fit the model
(another model config) is not damage: it raises `CheckpointMismatchError` and stays in place.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Mapping

import jax
import orbax.checkpoint as ocp

from molbind_jax.cli import InputError

log = logging.getLogger(__name__)

DAMAGED_DIR = "damaged"


class CheckpointMismatchError(InputError):
    """The saved state's arrays do not fit the model being resumed (another model config)."""


class NoIntactCheckpointError(InputError):
    """Every checkpoint of a run directory is damaged; nothing was moved."""


def read_failure_reason(err: BaseException) -> str:
    """A short, one-line description of why a checkpoint could not be read: tensorstore's
    status code and the file it failed on, or the error's own first words."""
    text = " ".join(str(err).split()) or type(err).__name__
    files = re.findall(r'local file "([^"]+)"', text)
    code = re.match(r"([A-Z_]{4,}):", text)
    if files and code:
        detail = text.rsplit(files[-1] + '"', 1)[-1].split(" [tensorstore_spec")[0].strip(" :")[:120]
        return f"{code.group(1)} reading {files[-1]}" + (f": {detail}" if detail else "")
    return f"{type(err).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


@contextlib.contextmanager
def held_stderr(grace_s: float = 1.0, replay: bool = True):
    """Holds what is written to file descriptor 2 while a possibly damaged step is read and
    replays it when the read succeeds. When it fails, tensorstore's reads still in flight
    complete into orbax's closed event loop and each prints a `RuntimeError: Event loop is
    closed` traceback from its own thread (dozens for a train state): those, and orbax's
    messages, are dropped after a short grace period; the one-line report replaces them."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            if not ok or not replay:
                time.sleep(grace_s)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok and replay:
                held.seek(0)
                data = held.read()
                if data:
                    os.write(2, data)


@contextlib.contextmanager
def quiet_orbax():
    """Silences orbax's own log lines (absl logger) while a possibly damaged step is probed:
    the one-line report says what is wrong."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class _FailedReadTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" reports. A failed read of a
    damaged step leaves orbax's deserialisation tasks with their exceptions unread; asyncio
    reports each when the task is garbage-collected, at any later moment of the run. Installed
    only once a damaged step was found, whose one-line report already says what is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task exception was never retrieved")


def drop_failed_read_reports() -> None:
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _FailedReadTasks) for f in logger.filters):
        logger.addFilter(_FailedReadTasks())


def _layout(tree) -> list[tuple[tuple[int, ...], str]]:
    """The sorted (shape, dtype) list of a tree's arrays (path-free: orbax's metadata tree
    spells containers differently from the live state)."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return sorted((tuple(int(d) for d in x.shape), str(jax.numpy.dtype(x.dtype))) for x in leaves
                  if hasattr(x, "shape"))


class Checkpointer:
    """Periodic/final checkpoints of a train state under `<workdir>/checkpoints`."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            enable_async_checkpointing=async_save,
        )
        with quiet_orbax():  # a damaged step's metadata is reported by restore_intact
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any], *, force: bool = False) -> bool:
        """Saves `state` (a pytree of arrays) and `meta` (JSON-able) at `step`.

        Returns whether a save was started (the manager skips steps off the save interval
        unless `force`). The caller must only pass a state whose loss was finite.
        """
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
            force=force,
        )
        if saved:
            log.info("checkpoint save started: step %d -> %s", step, self.directory)
        return saved

    def restore(self, state_template: Any, step: int | None = None, *,
                legacy: Callable[[Any], tuple[Any, Callable]] | None = None) -> tuple[Any, dict]:
        """Restores (state, meta) at `step` (default: latest) onto the structure, shapes, dtypes
        and shardings of `state_template`.

        A checkpoint whose state lacks top-level parts the template has (written by an older
        layout, e.g. before the frozen towers got their own `frozen` part) is read through
        `legacy(state_template)` -> (template of the old layout, function to the new one), e.g.
        `TrainStep.legacy_layout`; without it such a checkpoint raises CheckpointMismatchError."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        missing = self.missing_parts(state_template, step)
        if missing:
            plan = None
            if legacy is not None:
                try:
                    plan = legacy(state_template)
                except ValueError as e:
                    raise CheckpointMismatchError(f"checkpoint step {step} in {self.directory}: {e}") from None
            if plan is None:
                raise CheckpointMismatchError(
                    f"checkpoint step {step} in {self.directory} was written in an older state layout (it lacks "
                    f"{sorted(missing)}) and this reader has no conversion for it; resume it with the trainer "
                    "(molbind_jax.training.train converts it) or start fresh with a new --workdir.")
            old_template, convert = plan
            state, meta = self._restore(old_template, step)
            try:
                state = convert(state)
            except ValueError as e:
                raise CheckpointMismatchError(f"checkpoint step {step} in {self.directory}: {e}") from None
            log.info("checkpoint step %d read in the layout before %s existed and converted", step, sorted(missing))
            return state, meta
        return self._restore(state_template, step)

    def _restore(self, state_template: Any, step: int) -> tuple[Any, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def missing_parts(self, state_template: Any, step: int) -> set[str]:
        """Top-level keys of the (dict) `state_template` that the state saved at `step` lacks;
        empty when they match or orbax's metadata cannot be read (the restore reports that)."""
        if not isinstance(state_template, Mapping):
            return set()
        try:
            # Read from the step's folder: a fresh manager's item_metadata knows no handler for
            # the items before its first restore, and gives None.
            with quiet_orbax():
                md = ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), "state"))
            tree = getattr(md, "item_metadata", md)
            tree = getattr(tree, "tree", tree)
            return set(state_template) - set(tree.keys()) if isinstance(tree, Mapping) else set()
        except Exception:  # noqa: BLE001 - unreadable metadata is reported by the restore
            return set()

    def restore_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def saved_layout(self, step: int) -> list[tuple[tuple[int, ...], str]] | None:
        """The (shape, dtype) list of the arrays saved at `step`, or None when orbax's
        metadata of the state cannot be read."""
        try:
            md = self.manager.item_metadata(step)
            tree = md["state"]
            tree = getattr(tree, "tree", tree)
            return _layout(tree) if tree is not None else None
        except Exception:  # noqa: BLE001 - unreadable metadata is reported by the restore
            return None

    def restore_intact(self, state_template: Any, *, legacy: Callable | None = None) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest checkpoint that reads back whole, or None when the
        directory holds no checkpoint.

        Each newer checkpoint that fails to read is reported on one line (step, directory,
        what is wrong) and moved to `<directory>/damaged/<step>`. Raises
        `CheckpointMismatchError` when a checkpoint's arrays do not fit `state_template` (a
        changed model, not damage: nothing is moved) and `NoIntactCheckpointError` when every
        checkpoint is damaged (then nothing is moved either: the run must not silently start
        again from step 0). `legacy`: see `restore`; a checkpoint of an older layout that it
        cannot convert raises CheckpointMismatchError (it is not damage either).
        """
        steps = self.all_steps()
        if not steps:
            return None
        want = _layout(jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template))
        damaged: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                with quiet_orbax(), held_stderr():
                    state, meta = self.restore(state_template, step, legacy=legacy)
                if int(meta.get("step", step)) != step:
                    raise ValueError(f"its record says step {meta.get('step')}")
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore/json raise many types
                drop_failed_read_reports()
                with quiet_orbax(), held_stderr(replay=False):  # the failed read's stragglers
                    saved = self.saved_layout(step)
                    gc.collect()  # the failed read's tasks report now, while fd 2 is held
                if saved is not None and saved != want:
                    diff = sorted(set(saved) ^ set(want))[:4]
                    raise CheckpointMismatchError(
                        f"checkpoint step {step} in {self.directory} holds arrays of other shapes than the "
                        f"model being resumed ({len(saved)} saved vs {len(want)} expected; e.g. {diff}): the "
                        "model config changed. Start fresh with a new --workdir.") from e
                damaged.append((step, read_failure_reason(e)))
                continue
            for bad, why in damaged:
                moved = self._move_aside(bad)
                log.warning("checkpoint step %d in %s is damaged (%s); moved to %s", bad, self.directory, why, moved)
            if damaged:
                log.warning("resuming from step %d, the newest intact checkpoint", step)
            return step, state, meta
        raise NoIntactCheckpointError(
            f"no intact checkpoint in {self.directory}: " + "; ".join(f"step {s}: {why}" for s, why in damaged) +
            ". Nothing was moved; move the step folders away (or use a new --workdir) to start from step 0.")

    def _move_aside(self, step: int) -> str:
        """Moves the folder of `step` to `<directory>/damaged/<step>[.n]` and reloads the manager."""
        src = os.path.join(self.directory, str(step))
        dst_dir = os.path.join(self.directory, DAMAGED_DIR)
        os.makedirs(dst_dir, exist_ok=True)
        dst, n = os.path.join(dst_dir, str(step)), 1
        while os.path.exists(dst):
            dst, n = os.path.join(dst_dir, f"{step}.{n}"), n + 1
        shutil.move(src, dst)
        self.manager.reload()
        return dst

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager (call before exit)."""
        self.manager.wait_until_finished()
        self.manager.close()
