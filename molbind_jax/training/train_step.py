"""The MolBind train step: optimizer, schedule, per-pair gradients and one donated update.

Why the step is split into several jitted functions. Every pair type (graph_text,
conformer_text, graph_conformer, conformer_pocket) arrives in its own shape bucket: up to ~8
text lengths, ~8 atom counts, ~8 pocket sizes and ~8 graph budgets. One `jax.jit` over all four
pair batches would compile a program for every *combination* of those shapes (the product,
thousands of programs). Here each pair type has its own jitted `value_and_grad` (compiled once
per shape of *that* pair), the gradients are summed by a small jitted add, and a single jitted
update (state donated) applies AdamW. The number of compiled programs therefore grows with the
*sum* of the bucket counts. The four pair batches (and every micro-batch of gradient
accumulation) still feed ONE optimizer update, as in the original, where one `training_step`
returns `0.25*(L_gt + L_ct) + 0.25*(L_gc + L_cp)`.

On accelerators with fixed shapes (no bucketing), `fused=True` compiles the whole step (all
pairs, all micro-batches, update) into a single program, which saves the dispatch and the
host round trips between the pieces.

The model is handled in NNX functional style: `nnx.split` once into a static graphdef and
pytrees (trainable params, the frozen towers' params, BatchNorm statistics, the rest; only the
trainable ones are differentiated and optimized); each jitted function `nnx.merge`s
them, runs the forward and returns the updated `nnx.BatchStat` state. GIN BatchNorm statistics
are chained through the pairs in order (graph_text then graph_conformer), as the original's
single forward updates them twice per step. Dropout keys are a pure function of
(seed, step, micro-batch, pair), so a resumed run draws exactly the same masks.

Rows and devices: every batch array is a global array sharded on the mesh axis "data" (rows
s*B/S..(s+1)*B/S-1 on device s); parameters, optimizer state and gradients are replicated.
The loss (`losses.pair_infonce`) gathers the columns across "data" itself.

What all this computes is stated plainly in objective.py (`objective`: the weighted sum over
pairs of the pair InfoNCE of `pair_embeddings` in train mode); tests/training/test_objective.py
checks that one step's loss, gradient and update are those of `jax.grad` of it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from molbind_data import schema

# ----------------------------------------------------------------------------------------------
# Learning-rate schedule and optimizer.


def lr_schedule(
    *,
    peak_lr: float = 1e-4,
    warmup_lr: float = 1e-6,
    min_lr: float = 1e-5,
    warmup_steps: int = 1000,
    total_steps: int,
    steps_per_epoch: int | None = None,
    cosine_per_epoch: bool = False,
) -> optax.Schedule:
    """Linear warm-up from `warmup_lr` to `peak_lr`, then cosine decay to the floor `min_lr`.

    `step` counts optimizer updates done (the update with index `step` uses `schedule(step)`).

    `cosine_per_epoch=True` is the LAVIS `LinearWarmupCosineLRScheduler` the original uses
    (lavis/common/optims.py 56-94, 119-132; stepped with (current_epoch, global_step) in
    model/run.py 185): during epoch 0 (`step < steps_per_epoch`) the rate is
    `min(peak, warmup_lr + (peak - warmup_lr) * step / max(warmup_steps, 1))`, so it holds the
    peak once warmed up and a warm-up longer than the epoch is cut at the epoch's end; from
    epoch e >= 1 on it is `min_lr + (peak - min_lr) * (1 + cos(pi * e / num_epochs)) / 2`,
    constant within the epoch, with `num_epochs = ceil(total_steps / steps_per_epoch)`.

    Otherwise the cosine moves every step, `t = (step - warmup) / (total - warmup)`, after a
    warm-up of `warmup_steps` steps: smoother for short runs.
    """
    warmup_steps = max(int(warmup_steps), 0)
    total_steps = max(int(total_steps), 1)
    per_epoch = bool(cosine_per_epoch and steps_per_epoch)

    def cosine(t):
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(t, 0.0, 1.0)))

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(warmup_lr + (peak_lr - warmup_lr) * step / max(warmup_steps, 1), peak_lr)
        if per_epoch:
            num_epochs = max(math.ceil(total_steps / steps_per_epoch), 1)
            epoch = jnp.floor(step / steps_per_epoch)
            return jnp.where(epoch < 1, warm, cosine(epoch / num_epochs))
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return jnp.where(step < warmup_steps, warm, cosine(t))

    return schedule


def param_labels(trainable: Any, frozen: Sequence[str] = ()) -> Any:
    """Labels each trainable leaf "train", "frozen" (top-level model submodule in `frozen`) or
    "temperature" (the learnable temperature, which gets no weight decay).

    Frozen towers are no longer in the trainable tree (`init_trainable`), so "frozen" labels
    appear only on the full-model tree of a checkpoint written before that change, which
    `TrainStep.legacy_layout` restores through the same optimizer; pass
    `functools.partial(param_labels, frozen=...)` to `make_optimizer` for that to work."""
    frozen = set(frozen)

    def label(path, _):
        keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
        if keys[0] == "log_scale":
            return "temperature"
        if len(keys) > 1 and keys[1] in frozen:
            return "frozen"
        return "train"

    return jax.tree_util.tree_map_with_path(label, trainable)


def make_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float = 0.05,
    b1: float = 0.9,
    b2: float = 0.999,
    grad_clip_norm: float | None = None,
    labels: Any,
) -> optax.GradientTransformation:
    """AdamW (decay on every model parameter, as the original), zero updates for leaves labelled
    "frozen", plain Adam for the learnable temperature. `labels`: the label tree of the
    trainable tree, or a function of the tree giving it (e.g. `functools.partial(param_labels,
    frozen=config.frozen)`), which also serves the full-model tree of a legacy checkpoint."""
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    parts = {
        "train": adamw,
        "frozen": optax.set_to_zero(),
        "temperature": optax.adam(schedule, b1=b1, b2=b2),
    }
    tx = optax.multi_transform(parts, labels)
    if grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx


# ----------------------------------------------------------------------------------------------
# Train state.


@dataclasses.dataclass
class StepOptions:
    """What the step needs from the experiment config (see experiments/configs/common.py)."""

    pairs: tuple[str, ...] = schema.ORIGINAL_PAIRS
    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: {p: 0.25 for p in schema.ORIGINAL_PAIRS})
    temperature: float = 0.1
    learn_temperature: bool = False
    gather_gradient: bool = True
    loss_chunk_size: int | None = None
    # Leave other rows holding the same molecule / text / protein out of each row's softmax
    # (the batch's identity keys, losses.py); False = the original's plain InfoNCE.
    duplicate_aware: bool = True
    seed: int = 0
    fused: bool = False
    # Top-level model submodules kept fixed: their parameters live in the state's "frozen"
    # part, outside the differentiated and optimized tree (no gradient, no optimizer state).
    frozen: tuple[str, ...] = ()


def frozen_filter(frozen: Sequence[str]) -> Callable:
    """nnx filter of the parameters of the top-level submodules named in `frozen`."""
    names = frozenset(frozen)
    return lambda path, v: bool(path) and path[0] in names and isinstance(v, nnx.Param)


def split_params(model: nnx.Module, frozen: Sequence[str]) -> tuple[Any, Any]:
    """(trainable nnx.Param state, frozen nnx.Param state) of `model`; refuses a name in
    `frozen` that is no top-level submodule with parameters."""
    frozen_params, trainable = nnx.state(model, frozen_filter(frozen), nnx.Param)
    have = set(frozen_params.keys())
    unknown = [n for n in frozen if n not in have]
    if unknown:
        towers = sorted({str(k) for k in nnx.state(model, nnx.Param).keys()})
        raise ValueError(f"frozen names {unknown} are no submodule with parameters of the model (it has {towers})")
    return trainable, frozen_params


def init_trainable(model: nnx.Module, opts: StepOptions) -> dict:
    """The pytree the optimizer updates: the model's nnx.Param state less the frozen towers'
    (`opts.frozen`, kept in `init_frozen`) and, when learnable, one log-scale log(1/temperature)
    per pair type (started at log(1/opts.temperature))."""
    from molbind_jax.training import losses

    trainable = {"model": split_params(model, opts.frozen)[0]}
    if opts.learn_temperature:
        v = losses.log_scale_init(opts.temperature)
        trainable["log_scale"] = {p: jnp.asarray(v, jnp.float32) for p in opts.pairs}
    return trainable


def init_frozen(model: nnx.Module, opts: StepOptions) -> Any:
    """The parameters of the frozen towers (`opts.frozen`), never differentiated or updated."""
    return split_params(model, opts.frozen)[1]


def temperatures(trainable: Mapping, opts: StepOptions) -> dict[str, jax.Array]:
    """Per-pair temperatures: fixed, or from the learnable log-scale, clamped CLIP style
    (1/tau <= 100) by `losses.temperature_from_log_scale`."""
    from molbind_jax.training import losses

    if "log_scale" not in trainable:
        return {p: jnp.asarray(opts.temperature, jnp.float32) for p in opts.pairs}
    return {p: losses.temperature_from_log_scale(v) for p, v in trainable["log_scale"].items()}


def fresh(*states: Any) -> tuple:
    """Copies of nnx states whose Variables belong to the current trace.

    `nnx.merge` reuses the Variable objects of the states it is given; a Variable created at an
    outer trace level (e.g. the jit around a `value_and_grad`) cannot be written from the inner
    one, which BatchNorm's running-stat update does. Rebuilding the pytree creates new ones.
    """
    return tuple(jax.tree.map(lambda x: x, s) for s in states)


def reseed_state(rest: Any, key: jax.Array) -> Any:
    """`rest` (the non-param, non-BN state: RNG streams) with every stream's key replaced by
    `fold_in(key, crc32(path))` (the stream's place in the model, e.g.
    `conformer_encoder/dropout_rngs`) and its counter reset, so dropout masks are a pure
    function of `key` and differ between streams (every dropout stream has the tag "dropout",
    so folding in the tag alone would give every layer and tower the same masks). Done on the
    state, before `nnx.merge`, because mutating a merged module's RNG variables from inside a
    transformed function is not allowed."""

    def name(path) -> str:
        return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

    def f(path, v):
        if isinstance(v, nnx.RngKey):
            return v.replace(jax.random.fold_in(key, zlib.crc32(name(path).encode()) & 0x7FFFFFFF))
        if isinstance(v, nnx.RngCount):
            return v.replace(jnp.zeros_like(v.value))
        return v

    return jax.tree_util.tree_map_with_path(f, rest, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ----------------------------------------------------------------------------------------------
# The step.


class TrainStep:
    """Builds and caches the jitted pieces of one optimizer update.

    State layout (a dict pytree, checkpointed as is): `step` (int32 scalar, optimizer updates
    done), `trainable` (see `init_trainable`), `frozen` (only with `opts.frozen`: the frozen
    towers' parameters, see `init_frozen`; never differentiated, updated or donated),
    `batch_stats` (nnx.BatchStat state) and `opt_state` (covers `trainable` only). `rest` (RNG
    streams and any other non-trainable variables) is not part of the state: it never changes,
    because keys are re-derived from the step.

    Public pieces (the step is `grad_fn` per pair, `add`, then `update`; `fused=True` traces the
    same pieces into one program): see docs/training.md, "The step's public pieces".
    """

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, mesh, opts: StepOptions):
        from molbind_jax.training import losses  # imported here so that the optimizer helpers need no model code

        self._losses = losses
        self.mesh = mesh
        self.opts = opts
        self.tx = tx
        graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        del params
        self.graphdef, self.rest = graphdef, rest
        self._initial_batch_stats = batch_stats
        self.replicated = NamedSharding(mesh, P())
        self._grad_fns: dict[str, Callable] = {}
        # The state is donated (updated in place); the gradients are not: XLA has no output left
        # to alias them to once the state's buffers are reused. The frozen parameters are never
        # passed to the update (they do not change), so they are never donated.
        self._update = jax.jit(self._update_impl, donate_argnums=(0,), out_shardings=self.replicated)
        self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=(0,),
                            out_shardings=self.replicated)
        self._fused = None

    # -- state ---------------------------------------------------------------------------------

    def init_state(self, model: nnx.Module) -> dict:
        trainable = init_trainable(model, self.opts)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "trainable": trainable,
            "batch_stats": nnx.state(model, nnx.BatchStat),
            "opt_state": self.tx.init(trainable),
        }
        if self.opts.frozen:
            state["frozen"] = init_frozen(model, self.opts)
        return jax.device_put(state, self.replicated)

    def merged_model(self, state: Mapping) -> nnx.Module:
        """An nnx.Module holding the state's parameters and statistics (eval, export)."""
        return nnx.merge(self.graphdef, state["trainable"]["model"], *self._frozen_states(state.get("frozen")),
                         state["batch_stats"], self.rest)

    def _frozen_states(self, frozen) -> tuple:
        if frozen is None:
            if self.opts.frozen:
                raise ValueError(f"this step freezes {list(self.opts.frozen)}: pass their parameters, "
                                 'state["frozen"] (TrainStep.init_state)')
            return ()
        return (frozen,)

    def legacy_layout(self, state: Mapping) -> tuple[Any, Callable[[Any], dict]] | None:
        """For a checkpoint written before the frozen towers left the trainable tree (every
        parameter in `trainable.model`, the optimizer state over all of them with zero updates
        for the frozen ones): (a template of that layout, a function mapping a state restored
        onto it to the current layout). None when this step has no frozen towers (the layout
        did not change). Needs an optimizer built with a labels *function* (`make_optimizer`);
        raises ValueError otherwise."""
        if "frozen" not in state:
            return None
        names = set(self.opts.frozen)
        old_trainable = dict(state["trainable"])
        old_trainable["model"] = nnx.State.merge(state["trainable"]["model"], state["frozen"])
        try:
            old_opt = self.tx.init(old_trainable)
        except Exception as e:  # noqa: BLE001 - optax reports a label tree of another structure variously
            raise ValueError("the optimizer was built with a label tree of the current layout; build it with "
                             "labels=functools.partial(param_labels, frozen=...) to read a checkpoint of the "
                             f"layout before frozen towers left the trainable state ({type(e).__name__})") from e
        template = {k: v for k, v in state.items() if k != "frozen"}
        template["trainable"], template["opt_state"] = old_trainable, old_opt
        template = jax.device_put(template, self.replicated)

        def refit(like, leaves, what):
            want = jax.tree.leaves(like)
            if len(want) != len(leaves) or any(np.shape(a) != np.shape(b) for a, b in zip(want, leaves)):
                raise ValueError(f"the legacy checkpoint's {what} does not fit the model's layout")
            return jax.tree.unflatten(jax.tree.structure(like), leaves)

        def convert(old: Mapping) -> dict:
            flat = jax.tree_util.tree_flatten_with_path(old["trainable"]["model"])[0]
            top = [getattr(path[0], "key", None) in names for path, _ in flat]
            new = {k: v for k, v in old.items() if k not in ("trainable", "opt_state")}
            new["trainable"] = dict(old["trainable"])
            new["trainable"]["model"] = refit(state["trainable"]["model"],
                                              [x for (_, x), f in zip(flat, top) if not f], "trainable parameters")
            new["frozen"] = refit(state["frozen"], [x for (_, x), f in zip(flat, top) if f], "frozen parameters")
            # The frozen leaves carried no optimizer state (masked, zero update): the remaining
            # leaves are those of the current optimizer state, in the same order.
            new["opt_state"] = refit(state["opt_state"], jax.tree.leaves(old["opt_state"]), "optimizer state")
            return new

        return template, convert

    # -- pieces --------------------------------------------------------------------------------

    def _pair_loss(self, pair, trainable, frozen, batch_stats, rest, batch, step, micro):
        """Weighted loss of one pair type, its unweighted value and the updated BN stats.
        `trainable` is differentiated; `frozen` (the frozen towers' parameters, or None) is not."""
        key = jax.random.fold_in(jax.random.key(self.opts.seed), step)
        # A pair's keys depend on its name, not on its place in the table: adding pair types
        # changes no existing pair's dropout masks.
        key = jax.random.fold_in(jax.random.fold_in(key, micro), zlib.crc32(pair.encode()) & 0x7FFFFFFF)
        extra = () if frozen is None else (frozen,)
        model = nnx.merge(self.graphdef, *fresh(trainable["model"], *extra, batch_stats, reseed_state(rest, key)))
        x, y, mask = model.pair_embeddings(pair, batch, train=True)
        tau = temperatures(trainable, self.opts)[pair]
        x_key, y_key = self._losses.batch_keys(batch, self.opts.duplicate_aware)
        loss, _ = self._losses.pair_infonce(
            x.astype(jnp.float32), y.astype(jnp.float32), mask, mesh=self.mesh, temperature=tau,
            gather_gradient=self.opts.gather_gradient, chunk_size=self.opts.loss_chunk_size,
            x_key=x_key, y_key=y_key)
        new_stats = nnx.state(model, nnx.BatchStat)
        return self.opts.weights[pair] * loss, (loss, new_stats)

    def _grad_impl(self, pair, trainable, batch_stats, batch, step, micro, frozen=None):
        self._frozen_states(frozen)  # a missing frozen part: a clear error at trace time
        grad_fn = jax.value_and_grad(self._pair_loss, argnums=1, has_aux=True)
        (_, (loss, new_stats)), grads = grad_fn(pair, trainable, frozen, batch_stats, self.rest, batch, step, micro)
        return loss, grads, new_stats

    def grad_fn(self, pair: str) -> Callable:
        """Jitted `(trainable, batch_stats, batch, step, micro, frozen=None) -> (loss, grads,
        batch_stats)` for one pair type: the unweighted pair loss, the gradient of the weighted
        loss (a tree like `trainable`, no frozen leaves) and the updated BN statistics; compiled
        once per distinct batch shape of that pair. `frozen` is `state["frozen"]` (required
        when the step has frozen towers)."""
        if pair not in self._grad_fns:
            self._grad_fns[pair] = jax.jit(functools.partial(self._grad_impl, pair),
                                           out_shardings=self.replicated)
        return self._grad_fns[pair]

    def pair_grad(self, state: Mapping, pair: str, batch, micro: int = 0):
        """`grad_fn(pair)` on a train state: (loss, grads, batch_stats) of one pair batch."""
        return self.grad_fn(pair)(state["trainable"], state["batch_stats"], batch, state["step"], micro,
                                  state.get("frozen"))

    def add(self, a, b):
        """Jitted sum of two gradient trees; `a` is donated (its buffers hold the sum)."""
        return self._add(a, b)

    def update(self, state: dict, grads, batch_stats, num_micro, loss_sum):
        """The jitted, donated AdamW update of `state` with the summed `grads` over `num_micro`
        micro-batches and the chained `batch_stats`; returns (new_state, finite). The frozen
        part is passed around the update, never donated."""
        part = {k: v for k, v in state.items() if k != "frozen"}
        new, finite = self._update(part, grads, batch_stats, jnp.float32(num_micro), loss_sum)
        if "frozen" in state:
            new["frozen"] = state["frozen"]
        return new, finite

    def _update_impl(self, state, grads, batch_stats, num_micro, loss_sum):
        """Mean over micro-batches, AdamW, and a finite guard: a non-finite loss or gradient
        leaves the state unchanged (the host then stops the run), so a bad update is never saved.
        `state` holds no frozen part."""
        grads = jax.tree.map(lambda g: g / num_micro, grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        # The finite leaves are counted with a dot, not and-ed: XLA turns an and-reduction over
        # per-leaf flags into a chain of scalar ands and fuses a copy of that chain into every
        # per-leaf select below (quadratic in the number of leaves: 470k ops and most of the
        # compile time of the full model). A dot is computed once.
        flags = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]).astype(jnp.float32)
        finite = (jnp.dot(flags, jnp.ones_like(flags)) == flags.shape[0]) & jnp.isfinite(loss_sum)
        new = {"step": state["step"] + 1, "trainable": trainable, "batch_stats": batch_stats,
               "opt_state": opt_state}
        keep = {"step": state["step"], "trainable": state["trainable"],
                "batch_stats": state["batch_stats"], "opt_state": state["opt_state"]}
        out = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, keep)
        return out, finite

    # -- public --------------------------------------------------------------------------------

    def __call__(self, state: dict, micro_batches: Sequence[Mapping[str, Mapping[str, jax.Array]]]):
        """One optimizer update from `micro_batches`: a list (length = gradient accumulation) of
        {pair: global batch} dicts. Returns (new_state, metrics) with device scalars: `loss`
        (weighted total, mean over micro-batches), `loss/<pair>` (unweighted, mean over the
        micro-batches that hold the pair), `finite`."""
        if self.opts.fused:
            return self._fused_call(state, micro_batches)
        grads, batch_stats, sums, counts = self._accumulate(
            state, micro_batches, lambda pair, *args: self.grad_fn(pair)(*args), self._add)
        if grads is None:
            raise ValueError("train step got no batches")
        n = len(micro_batches)
        state, finite = self.update(state, grads, batch_stats, n, sum(sums.values()))
        return state, self._metrics(sums, counts, n, finite)

    def _accumulate(self, state, micro_batches, grad_of, add):
        """Sums each pair's gradients over pairs and micro-batches, threading the BatchNorm
        statistics through in order. `grad_of(pair, trainable, batch_stats, batch, step, micro,
        frozen)` is the per-pair jitted function (split step) or its traced body (fused step).
        Also returns each pair's loss sum and how many micro-batches held it (pair_every)."""
        step = state["step"]
        batch_stats = state["batch_stats"]
        frozen = state.get("frozen")
        grads = None
        sums: dict[str, jax.Array] = {}
        counts: dict[str, int] = {}
        for micro, batches in enumerate(micro_batches):
            for pair in self.opts.pairs:
                if pair not in batches:
                    continue
                loss, g, batch_stats = grad_of(pair, state["trainable"], batch_stats, batches[pair], step, micro,
                                               frozen)
                grads = g if grads is None else add(grads, g)
                sums[pair] = loss if pair not in sums else sums[pair] + loss
                counts[pair] = counts.get(pair, 0) + 1
        return grads, batch_stats, sums, counts

    def _metrics(self, sums, counts, n, finite):
        # loss/<pair>: mean over the micro-batches that held the pair; loss: the optimised
        # objective, the weighted sum over pairs averaged over all n micro-batches (the two
        # agree unless pair_every leaves a pair out of some micro-batches).
        metrics = {f"loss/{p}": v / counts[p] for p, v in sums.items()}
        metrics["loss"] = sum(self.opts.weights[p] * v for p, v in sums.items()) / n
        metrics["finite"] = finite & jnp.isfinite(metrics["loss"])
        return metrics

    # -- fused single-program variant ----------------------------------------------------------

    def _fused_impl(self, state, frozen, micro_batches):
        full = dict(state) if frozen is None else {**state, "frozen": frozen}
        grads, batch_stats, sums, counts = self._accumulate(
            full, micro_batches, self._grad_impl, lambda a, b: jax.tree.map(jnp.add, a, b))
        n = len(micro_batches)
        new_state, finite = self._update_impl(state, grads, batch_stats, jnp.float32(n), sum(sums.values()))
        return new_state, self._metrics(sums, counts, n, finite)

    def _fused_call(self, state, micro_batches):
        # One program for everything: only sensible when every pair has one fixed shape
        # (otherwise it recompiles for each combination of shapes, see the module docstring).
        if self._fused is None:
            self._fused = jax.jit(self._fused_impl, donate_argnums=(0,), out_shardings=self.replicated)
        part = {k: v for k, v in state.items() if k != "frozen"}
        new, metrics = self._fused(part, state.get("frozen"), list(micro_batches))
        if "frozen" in state:
            new["frozen"] = state["frozen"]
        return new, metrics

    # -- evaluation ----------------------------------------------------------------------------

    @functools.cached_property
    def _embed_eval(self):
        def f(pair, trainable_model, frozen, batch_stats, batch):
            model = nnx.merge(self.graphdef, trainable_model, *(() if frozen is None else (frozen,)),
                              batch_stats, self.rest)
            x, y, mask = model.pair_embeddings(pair, batch, train=False)
            return x.astype(jnp.float32), y.astype(jnp.float32), mask

        return jax.jit(f, static_argnums=(0,), out_shardings=self.replicated)

    def eval_embeddings(self, state: Mapping, pair: str, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Eval-mode (running BN statistics, no dropout) embeddings of one pair batch."""
        return self._embed_eval(pair, state["trainable"]["model"], state.get("frozen"), state["batch_stats"], batch)


def state_leaves_equal(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two pytrees of arrays (used by the resume tests)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
