"""The device mesh and the host-local -> global array step of data-parallel training.

There is one mesh axis, "data". Every batch array (DESIGN.md section 2) is sharded on its
leading axis: the example axis B for the text and atoms batches (`TextBatch`, `AtomsBatch`)
and a `PairBatch`'s mask, and the shard axis S for the packed graphs (`GraphBatch.nodes
[S, Nn, 2]`, ...), so that device d receives graph shard d and message passing never crosses
devices. Parameters and optimizer state are replicated.

Multi-process (multi-host) runs: each process loads only its own part of the global batch
(`molbind_jax.data.pipeline` with process_index/process_count) and `global_batch` stitches the parts
into global arrays with `jax.make_array_from_process_local_data`: process p's rows become rows
`p*B_local .. (p+1)*B_local - 1` of the global array, in the order of `jax.devices()`.

`maybe_initialize_distributed` starts `jax.distributed` when asked:
  * by the flag (`--distributed` in the launcher), which lets jax auto-detect the cluster
    (SLURM, Open MPI, TPU pod slices, Kubernetes) or read the variables below;
  * or by the environment: `JAX_COORDINATOR_ADDRESS=host:port` together with
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (read here, since jax itself reads only the
    address), optionally `JAX_LOCAL_DEVICE_IDS`.
On CPU, cross-process collectives use gloo (this jax's default for
`jax_cpu_collectives_implementation`; set explicitly here so that the choice is visible).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, *, devices=None) -> Mesh:
    """A 1-D mesh with axis "data" over the first `num_devices` devices (default: all).

    The axis type is Auto (sharding propagated by XLA), not jax.make_mesh's default Explicit:
    the models are plain jnp code and only the batch and loss are sharded by hand.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={num_devices} but {len(devices)} device(s) are available")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters, optimizer state and scalars: a full copy on every device."""
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading axis split over "data", the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_tree, mesh: Mesh):
    """Host-local numpy batch (pytree) -> global jax arrays sharded on the leading axis.

    Every leaf's leading axis is this process's slice of the global leading axis; it must be
    divisible by the number of this process's devices in the mesh (each device gets an equal
    slice). Zero-dimensional leaves are treated as replicated values (they must be equal on
    every process). Strings and other non-numeric leaves raise a clear error.
    """
    n_local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
    sharded = data_sharded(mesh)
    repl = replicated(mesh)

    def convert(path, leaf):
        arr = np.asarray(leaf)
        name = jax.tree_util.keystr(path)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"batch leaf {name} has dtype {arr.dtype}; only numeric arrays can go to the devices")
        if arr.ndim == 0:
            return jax.make_array_from_process_local_data(repl, arr)
        if arr.shape[0] % n_local:
            raise ValueError(
                f"batch leaf {name}: leading axis {arr.shape[0]} is not divisible by the "
                f"{n_local} local device(s) of the mesh"
            )
        return jax.make_array_from_process_local_data(sharded, arr)

    return jax.tree_util.tree_map_with_path(convert, local_tree)


def maybe_initialize_distributed(flag: bool = False, *, cpu_collectives: str = "gloo") -> bool:
    """Calls `jax.distributed.initialize()` when the flag or the environment asks for it.

    Must run before anything touches the devices. Returns True when this process is (now)
    part of a multi-process run, False for a single-process run.
    """
    env_address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not flag and not env_address:
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if env_address:
        kwargs["coordinator_address"] = env_address
        for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if os.environ.get(env):
                kwargs[key] = int(os.environ[env])
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:
        raise ValueError(
            f"jax.distributed.initialize failed ({e}). Outside a detected cluster (SLURM, Open MPI, "
            "TPU, Kubernetes) set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID."
        ) from e
    logging.info(
        "jax.distributed initialised: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True
