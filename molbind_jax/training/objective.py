"""The training objective, stated once in plain code: what `train_step.TrainStep` minimises.

For a model and one batch of each trained pair type, `{pair: PairBatch}`, in train mode:

    L = sum over pairs p of  weight_p * InfoNCE_p(model.pair_embeddings(p, batch_p, train=True))

where InfoNCE_p is `losses.pair_infonce` (symmetric, float32, the mean over the valid rows of
the pair's global batch, columns gathered over the mesh axis "data"; with `duplicate_aware`, the
default, another row whose x or y identity key equals the anchor's is left out of its softmax)
at the pair's temperature,
and the weights are the run's `loss_weights` (the original: 0.25 each). With gradient
accumulation the step minimises the mean of L over its micro-batches.

`TrainStep` computes the same value and gradient in pieces (one jitted `value_and_grad` per
pair and shape, gradients summed, the update applied once, dropout keys derived from the step;
see train_step.py); tests/training/test_objective.py checks that the pieces give `jax.grad` of
this function, on one device and on eight.
"""
from __future__ import annotations

from typing import Mapping

from molbind_jax.training import losses


def objective(model, batches: Mapping, *, weights: Mapping[str, float] | None = None,
              temperatures: float | Mapping[str, object] = losses.DEFAULT_TEMPERATURE, mesh=None,
              gather_gradient: bool = True, chunk_size: int | None = None, duplicate_aware: bool = True):
    """(L, per_pair) of `batches` ({pair: PairBatch}) under `model` (a MolBind) in train mode;
    per_pair[pair] = (unweighted pair loss, aux) as `losses.molbind_loss` returns it.

    The pairs are embedded in the order of `batches`, which is also the order in which train
    mode updates the GIN BatchNorm running statistics (they do not enter L: train mode
    normalises with the batch's own statistics)."""
    embeddings = {pair: model.pair_embeddings(pair, batch, train=True) for pair, batch in batches.items()}
    keys = {pair: losses.batch_keys(batch, duplicate_aware) for pair, batch in batches.items()}
    return losses.molbind_loss(embeddings, weights, temperatures, mesh=mesh,
                               gather_gradient=gather_gradient, chunk_size=chunk_size, keys=keys)
