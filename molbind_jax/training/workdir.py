"""A run directory met again: the config it was started with against the config of this start.

The launcher writes its config into `<workdir>/config.json` (key `train`). When the same
command is run again on a directory that holds checkpoints, the two configs are compared key
by key (dotted names, e.g. `model.overrides.embed_dim`):

* changes of keys in `CONTINUE_KEYS` (run length, logging, checkpointing, evaluation, where the
  data lives) are safe: the run continues, and a longer `total_steps` extends a finished run;
* any other change stops the start with one message listing every changed key (old -> new):
  continuing would mix two configs in one run (another learning rate, batch or seed), or the
  saved arrays no longer fit the model (another model, other towers or pairs). The message
  names both ways on: a new `--workdir` to start fresh, or `--allow_config_change` to continue
  anyway, which still stops when the saved arrays do not fit the new model's shapes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from molbind_jax.cli import InputError, one_line

CONFIG_FILE = "config.json"
ALLOW_FLAG = "--allow_config_change"

# Keys whose change leaves the run what it was: how long it runs, what it logs and saves,
# how often it evaluates, where its data lives, how it is laid out on the devices.
CONTINUE_KEYS = frozenset({
    "total_steps", "num_epochs", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every",
    "eval_batches", "eval_batch_size", "progress_bar", "tensorboard", "debug_kill_at_step", "num_devices",
    "loss_chunk_size", "data.data_dir", "data.build_if_missing",
    "text_cache_dir", "text_cache_rebuild",
})
CONTINUE_PREFIXES = ("dryrun.",)
# Keys added after runs were saved, with the value that gives the old behaviour: a saved
# config without the key reads as that value (a run from before the key resumes unchanged).
ADDED_KEY_DEFAULTS = {"text_cache": "off", "text_cache_dir": "", "text_cache_rebuild": False}


class ConfigChangedError(InputError):
    """The config of this start differs from the one the run directory was trained with."""


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: leaf value} of a nested mapping."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _jsonable(d: Mapping[str, Any]) -> dict:
    # As config.json stores it (tuples become lists, other objects their strings).
    return json.loads(json.dumps(d, default=str))


def config_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, new value)} for every key that differs (a key only one side
    has shows `<absent>` on the other)."""
    a, b = flatten(_jsonable(saved)), flatten(_jsonable(new))
    a = {**ADDED_KEY_DEFAULTS, **a} if any(k in b for k in ADDED_KEY_DEFAULTS) else a
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)}


def is_safe(key: str) -> bool:
    return key in CONTINUE_KEYS or key.startswith(CONTINUE_PREFIXES)


def describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def saved_config(workdir: str) -> dict | None:
    """The `train` config saved in `<workdir>/config.json`, or None when there is none.
    A file that does not parse is an InputError naming it."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return dict(json.load(f)["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not the launcher's config record ({type(e).__name__}: {e}); "
                         "use a new --workdir or remove the file") from e


def check_config(workdir: str, config: Mapping[str, Any], *, allow_change: bool = False,
                 has_checkpoint: bool = True) -> dict[str, tuple[Any, Any]]:
    """The changes between the saved and the new config of `workdir`; raises
    ConfigChangedError for changes outside CONTINUE_KEYS unless `allow_change`. Nothing is
    checked for a directory without checkpoints (nothing to continue)."""
    saved = saved_config(workdir) if has_checkpoint else None
    if saved is None:
        return {}
    changes = config_changes(saved, config)
    refused = {k: v for k, v in changes.items() if not is_safe(k)}
    if refused and not allow_change:
        raise ConfigChangedError(
            f"{workdir} holds a run with another config; changed: {describe(refused)}. "
            f"To start fresh, use a new --workdir; to continue this run with the new config, add {ALLOW_FLAG} "
            "(refused anyway when the saved arrays do not fit the new model)")
    return changes


def config_from_flag(FLAGS, name: str = "config"):
    """The config of an ml_collections config-file flag (`--config`); a file that is missing or
    fails to load is one line naming it (ml_collections defers the load, then raises a generic
    OSError on first use). Imports nothing heavy: dryrun calls it before JAX starts."""
    try:
        config = FLAGS[name].value
        if config is not None:
            config.to_dict  # noqa: B018 - a failed load is a placeholder that raises on first use
        return config
    except OSError as e:
        given = getattr(FLAGS[name], "config_filename", "") or f"the --{name} file"
        path = given.split(":")[0]
        if not os.path.exists(path):
            raise FileNotFoundError(f"--{name}: no such file: {path}") from e
        raise InputError(f"--{name}: cannot load {given}: {one_line(e)}") from e
