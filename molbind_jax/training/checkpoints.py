"""Training checkpoints: orbax CheckpointManager, periodic and final, atomic, keep-N.

A checkpoint holds everything a resumed run needs to continue bit for bit: the train state of
`train_step.TrainStep` (step, trainable params incl. a learnable temperature, BatchNorm
statistics, optimizer state) and a small JSON record (step, input position, seed, model
config). The RNG is not stored separately: dropout keys and the input order are pure functions
of (seed, step), so restoring the step restores them.

Orbax writes each step into a temporary directory and renames it when complete, so a run that
is killed mid-save leaves the previous checkpoint as the latest one. Saves are asynchronous;
`close()` (or `wait_until_finished()`) must run before the process exits.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


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

    def restore(self, state_template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores (state, meta) at `step` (default: latest) onto the structure, shapes, dtypes
        and shardings of `state_template`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def restore_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager (call before exit)."""
        self.manager.wait_until_finished()
        self.manager.close()
