"""One process of the 2-process loss test (run by test_multiprocess.py, not by pytest).

Each process owns 2 CPU devices, joins the run through `maybe_initialize_distributed` with the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables (gloo collectives),
loads only ITS half of a deterministic global batch, and computes on the 4-device mesh the
loss and gradients of a tiny "encoder" (one linear map per modality, replicated parameters)
followed by `pair_infonce`. Process 0 writes the results to the .npz given as argv[1].
"""
import os
import sys

import numpy as np


def problem(global_batch=16, in_dim=6, embed_dim=5):
    """The deterministic inputs and parameters shared with the single-process reference."""
    rng = np.random.default_rng(123)
    inputs_x = rng.normal(size=(global_batch, in_dim)).astype(np.float32)
    inputs_y = rng.normal(size=(global_batch, in_dim)).astype(np.float32)
    mask = np.ones(global_batch, bool)
    mask[[2, 13]] = False
    params = {
        "wx": rng.normal(size=(in_dim, embed_dim)).astype(np.float32),
        "wy": rng.normal(size=(in_dim, embed_dim)).astype(np.float32),
    }
    return inputs_x, inputs_y, mask, params


def loss_fn(params, inputs_x, inputs_y, mask, mesh, **kw):
    import jax.numpy as jnp

    from molbind_jax.training.losses import pair_infonce

    x = inputs_x @ params["wx"]
    y = inputs_y @ params["wy"]
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    y = y / jnp.linalg.norm(y, axis=-1, keepdims=True)
    return pair_infonce(x, y, mask, mesh=mesh, temperature=0.1, **kw)[0]


VARIANTS = {
    "dense": {},
    "chunked": {"chunk_size": 3},
    "no_grad_gather": {"gather_gradient": False},
}


def main(out_path):
    import jax
    from jax.experimental import multihost_utils

    from molbind_jax.training import sharding

    assert sharding.maybe_initialize_distributed(False), "JAX_COORDINATOR_ADDRESS should start the run"
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    mesh = sharding.make_mesh()
    inputs_x, inputs_y, mask, params = problem()
    p, half = jax.process_index(), inputs_x.shape[0] // 2
    local = {k: v[p * half:(p + 1) * half] for k, v in (("x", inputs_x), ("y", inputs_y), ("mask", mask))}
    batch = sharding.global_batch(local, mesh)
    # The global array is this process's half stitched to the other's, in process order.
    np.testing.assert_array_equal(multihost_utils.process_allgather(batch["x"], tiled=True), inputs_x)
    params = jax.device_put(params, sharding.replicated(mesh))
    results = {}
    for name, kw in VARIANTS.items():
        step = jax.jit(jax.value_and_grad(lambda prm, b: loss_fn(prm, b["x"], b["y"], b["mask"], mesh, **kw)))
        loss, grads = step(params, batch)
        results[f"{name}/loss"] = np.asarray(multihost_utils.process_allgather(loss, tiled=True))
        for k, g in grads.items():
            results[f"{name}/grad_{k}"] = np.asarray(multihost_utils.process_allgather(g, tiled=True))
    if p == 0:
        np.savez(out_path, **results)
    print(f"process {p}: done", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    main(sys.argv[1])
