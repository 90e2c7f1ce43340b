"""The MolBind module: embeddings, config round trip, and sharded = single-device gradients."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ckpt_fixtures import random_atoms
from molbind_data import schema
from molbind_jax.modalities import PairBatch
from molbind_jax.modalities.atoms import AtomsBatch
from molbind_jax.modalities.graph import GraphBatch
from molbind_jax.modalities.text import TextBatch
from molbind_jax.models.molbind import MolBind, MolBindConfig
from molbind_jax.training import losses
from molbind_jax.training.sharding import global_batch, make_mesh

# The original four pair types (the tiny model has the original four towers).
PAIRS = ("graph_text", "conformer_text", "graph_conformer", "conformer_pocket")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def random_graphs(num, rng):
    """Small chain-with-branch molecules as (node_feat [n,2], edge_index [2,e], edge_feat [e,2])."""
    graphs = []
    for _ in range(num):
        n = int(rng.integers(2, 6))
        nodes = np.stack([rng.integers(0, 118, n), rng.integers(0, 3, n)], 1).astype(np.int32)
        bonds = [(i, i + 1) for i in range(n - 1)]
        src = [a for a, b in bonds] + [b for a, b in bonds]
        dst = [b for a, b in bonds] + [a for a, b in bonds]
        feat = np.stack([rng.integers(0, 4, len(src)), rng.integers(0, 3, len(src))], 1).astype(np.int32)
        graphs.append((nodes, np.array([src, dst], np.int32).reshape(2, -1), feat))
    return graphs


def pack_graphs(graphs, shards):
    """DESIGN.md section 2 layout, written here independently of the input pipeline."""
    per = len(graphs) // shards
    groups = [graphs[s * per:(s + 1) * per] for s in range(shards)]
    nn = max(sum(g[0].shape[0] for g in grp) for grp in groups) + 1  # room for a padding node
    ne = max(sum(g[1].shape[1] for g in grp) for grp in groups) + 1
    out = {k: [] for k in GraphBatch._fields}
    for grp in groups:
        nodes = np.zeros((nn, 2), np.int32)
        edges = np.zeros((ne, 2), np.int32)
        snd = np.full(ne, nn - 1, np.int32)  # padding edges point at the last (padding) node
        rcv = np.full(ne, nn - 1, np.int32)
        off_n = off_e = 0
        n_node, n_edge = [], []
        for x, ei, ef in grp:
            nodes[off_n:off_n + len(x)] = x
            edges[off_e:off_e + ei.shape[1]] = ef
            snd[off_e:off_e + ei.shape[1]] = ei[0] + off_n
            rcv[off_e:off_e + ei.shape[1]] = ei[1] + off_n
            n_node.append(len(x))
            n_edge.append(ei.shape[1])
            off_n += len(x)
            off_e += ei.shape[1]
        out["nodes"].append(nodes)
        out["edges"].append(edges)
        out["senders"].append(snd)
        out["receivers"].append(rcv)
        out["n_node"].append(np.array(n_node + [nn - off_n], np.int32))
        out["n_edge"].append(np.array(n_edge + [ne - off_e], np.int32))
    return GraphBatch(**{k: np.stack(v) for k, v in out.items()})


def atoms(batch, length, vocab, rng):
    return random_atoms(batch, length, vocab, rng, np.int32)


def make_batches(batch=16, shards=8, seed=0, vocab_text=64):
    rng = np.random.default_rng(seed)
    graphs = random_graphs(batch, rng)
    ids = rng.integers(5, vocab_text, (batch, 8)).astype(np.int32)
    lens = rng.integers(2, 9, batch)
    tmask = (np.arange(8)[None] < lens[:, None]).astype(np.int32)
    ids = ids * tmask
    ct, cc = atoms(batch, 8, 31, rng)
    pt, pc = atoms(batch, 16, 10, rng)
    pair_mask = np.ones(batch, bool)
    pair_mask[-1] = False  # a padded example
    sides = {"graph": pack_graphs(graphs, shards), "text": TextBatch(ids, tmask),
             "conformer": AtomsBatch(ct, cc), "pocket": AtomsBatch(pt, pc)}
    return {name: PairBatch(sides[schema.pair_type(name).x], sides[schema.pair_type(name).y], pair_mask)
            for name in PAIRS}, graphs


def jit_call(model, method, *args):
    """model.method(*args) under nnx.jit (one compile instead of hundreds of eager ops);
    string arguments (pair names) are bound statically."""
    static = [a for a in args if isinstance(a, str)]
    arrays = [a for a in args if not isinstance(a, str)]
    return nnx.jit(lambda m, *a: getattr(m, method)(*static, *a))(model, *arrays)


@pytest.fixture(scope="module")
def model():
    return MolBind(MolBindConfig.tiny(), rngs=nnx.Rngs(0))


@pytest.mark.slow  # compiles tiny towers: ~5-10 s of CPU each
def test_embeddings_are_unit_float32_rows(model):
    batches, _ = make_batches(batch=8, shards=2)
    outs = {}
    for pair in PAIRS:
        x, y, mask = outs[pair] = jit_call(model, "pair_embeddings", pair, batches[pair])
        for e in (x, y):
            assert e.shape == (8, 16) and e.dtype == jnp.float32
            np.testing.assert_allclose(np.linalg.norm(np.asarray(e), axis=1), 1.0, rtol=1e-5)
        assert mask.dtype == jnp.bool_ and not bool(mask[-1])
    # One conformer tower: the conformer side of conformer_text and conformer_pocket agree.
    np.testing.assert_allclose(outs["conformer_text"][0], outs["conformer_pocket"][0], atol=1e-6)
    np.testing.assert_allclose(outs["conformer_text"][0], outs["graph_conformer"][1], atol=1e-6)
    np.testing.assert_allclose(outs["graph_text"][0], outs["graph_conformer"][0], atol=1e-6)
    np.testing.assert_allclose(outs["graph_text"][1], outs["conformer_text"][1], atol=1e-6)
    with pytest.raises(ValueError, match="unknown pair type"):
        model.pair_embeddings("text_text", batches["graph_text"])
    # normalize=False: the raw projections (the original's evaluation features), whose
    # L2-normalised rows are the default embeddings.
    b = batches["conformer_pocket"]
    for modality, side in (("conformer", b.x), ("pocket", b.y)):
        raw = np.asarray(nnx.jit(lambda m, bb: m.embed(modality, bb, normalize=False))(model, side))
        unit = np.asarray(nnx.jit(lambda m, bb: m.embed(modality, bb))(model, side))
        assert raw.dtype == np.float32
        assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
        np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, rtol=1e-5, atol=1e-6)
    # A batch of another shape than the tower's typed batch: a clear error, not a deep trace.
    with pytest.raises(TypeError, match=r"graph tower takes a GraphBatch\(nodes, edges, senders.*got dict"):
        model.embed_graph({"nodes": batches["graph_text"].x.nodes})
    with pytest.raises(TypeError, match=r"text tower takes a TextBatch\(ids, mask\).*got AtomsBatch"):
        model.embed("text", b.x)


@pytest.mark.slow  # compiles tiny towers: ~5-10 s of CPU each
def test_graph_rows_in_example_order_whatever_the_sharding(model):
    rng = np.random.default_rng(3)
    graphs = random_graphs(8, rng)
    ref = np.asarray(jit_call(model, "embed_graph", pack_graphs(graphs, 1)))
    for shards in (2, 4, 8):
        np.testing.assert_allclose(np.asarray(jit_call(model, "embed_graph", pack_graphs(graphs, shards))), ref, atol=1e-6)
    # The rows follow the examples (a permutation of the graphs permutes the rows).
    perm = rng.permutation(8)
    out = np.asarray(jit_call(model, "embed_graph", pack_graphs([graphs[i] for i in perm], 4)))
    np.testing.assert_allclose(out, ref[perm], atol=1e-6)
    assert not np.allclose(ref[0], ref[1])


@pytest.mark.slow  # compiles tiny towers: ~5-10 s of CPU each
def test_pooling_modes_differ_only_through_padding():
    cfg = MolBindConfig.tiny(unimol_pooling="original")
    m_orig = MolBind(cfg, rngs=nnx.Rngs(0))
    m_atoms = MolBind(MolBindConfig.tiny(), rngs=nnx.Rngs(0))
    # Every molecule fills its row exactly to a multiple of 8: the two poolings agree.
    rng = np.random.default_rng(0)
    tokens = np.concatenate([[1], rng.integers(4, 30, 6), [2]])[None].repeat(2, 0).astype(np.int32)
    coords = rng.normal(size=(2, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jit_call(m_orig, "embed_conformer", tokens, coords)),
                               np.asarray(jit_call(m_atoms, "embed_conformer", tokens, coords)), atol=1e-6)
    tokens[1, 5:] = 0
    tokens[1, 4] = 2
    assert not np.allclose(np.asarray(jit_call(m_orig, "embed_conformer", tokens, coords))[1],
                           np.asarray(jit_call(m_atoms, "embed_conformer", tokens, coords))[1], atol=1e-4)


def test_config_round_trip_and_presets():
    cfg = MolBindConfig.tiny(dtype="bfloat16", unimol_pooling="original")
    back = MolBindConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    orig = MolBindConfig.original()
    assert (orig.bert.hidden_size, orig.bert.num_layers, orig.bert.vocab_size, orig.bert.use_token_type) == (768, 12, 31091, False)
    assert (orig.gin.num_layers, orig.gin.emb_dim, orig.gin.self_loop_attr) == (5, 300, (0, 0))
    assert (orig.conformer.num_layers, orig.conformer.embed_dim, orig.conformer.vocab_size, orig.pocket.vocab_size) == (15, 512, 31, 10)
    assert orig.embed_dim == 512
    assert MolBindConfig.from_dict(orig.to_dict()) == orig
    partial = MolBindConfig.from_dict({"embed_dim": 8, "gin": {"num_layers": 1, "emb_dim": 4}})
    assert partial.gin.num_layers == 1 and partial.gin.num_bond_type == 6 and partial.embed_dim == 8
    assert partial.bert == MolBindConfig().bert  # untouched sub-configs: the base's
    small = MolBindConfig.from_dict({"gin": {"num_layers": 3}, "dtype": "bfloat16"}, base=MolBindConfig.tiny())
    assert small.gin == MolBindConfig.tiny().gin.__class__.tiny(num_layers=3)
    assert small.bert == MolBindConfig.tiny().bert and small.dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown GINConfig field"):
        MolBindConfig.from_dict({"gin": {"layers": 3}})
    with pytest.raises(ValueError, match="unimol_pooling"):
        MolBindConfig.tiny(unimol_pooling="cls")


def test_config_modalities_round_trip_replace_and_errors():
    from molbind_jax.models.bert import BertConfig
    from molbind_jax.models.gin import GINConfig

    tiny = MolBindConfig.tiny()
    assert tiny.modalities == ("text", "graph", "conformer", "pocket")
    assert tiny.to_dict()["modalities"] == ["text", "graph", "conformer", "pocket"]
    # Towers by the spec's config key and by modality name; immutable.
    assert isinstance(tiny.bert, BertConfig) and tiny.bert is tiny.tower("text") is tiny.text
    assert isinstance(tiny.gin, GINConfig) and tiny.gin is tiny.tower("graph")
    assert tiny.conformer.vocab_size == 31 and tiny.pocket.vocab_size == 10
    with pytest.raises(AttributeError, match="immutable"):
        tiny.embed_dim = 8

    # A two-tower model: to_dict names its modalities and only their towers; from_dict gives it back.
    two = MolBindConfig.tiny(modalities=("graph", "text"), embed_dim=8)
    d = json.loads(json.dumps(two.to_dict()))
    assert d["modalities"] == ["graph", "text"] and set(d) == {"modalities", "gin", "bert", "embed_dim",
                                                               "unimol_pooling", "dtype"}
    back = MolBindConfig.from_dict(d, base=MolBindConfig.tiny())
    assert back == two and back.modalities == ("graph", "text") and back.gin == tiny.gin
    with pytest.raises(AttributeError, match=r"no 'pocket'.*modalities: \('graph', 'text'\)"):
        two.pocket
    # Without "modalities" (an export of format 1) the base's modalities are kept.
    d.pop("modalities")
    assert MolBindConfig.from_dict(d, base=MolBindConfig.tiny()).modalities == tiny.modalities

    # Equality and hash: by value (the model is a static pytree node keyed by its config).
    assert tiny == MolBindConfig.tiny() and hash(tiny) == hash(MolBindConfig.tiny())
    assert len({tiny, MolBindConfig.tiny(), two}) == 2
    assert tiny != tiny.replace(embed_dim=17) and tiny != two and tiny != "tiny"

    # .replace: top-level fields, whole towers by key or modality, the modality set.
    r = tiny.replace(embed_dim=8, unimol_pooling="original")
    assert (r.embed_dim, r.unimol_pooling, r.gin, r.bert) == (8, "original", tiny.gin, tiny.bert)
    assert (tiny.embed_dim, tiny.unimol_pooling) == (16, "atoms")  # the original is untouched
    small_gin = GINConfig.tiny(num_layers=1)
    assert tiny.replace(gin=small_gin).gin == small_gin and tiny.replace(graph=small_gin).gin == small_gin
    only_text = tiny.replace(modalities=("text",))
    assert only_text.modalities == ("text",) and dict(only_text.towers) == {"text": tiny.bert}
    assert only_text.replace(modalities=("text", "pocket")).pocket == tiny.pocket  # the preset's tower
    with pytest.raises(ValueError, match=r"unknown MolBindConfig field 'layers'; tower keys: "
                                         r"\['bert', 'conformer', 'gin', 'pocket'\]"):
        tiny.replace(layers=3)

    # Unknown names list the known ones.
    with pytest.raises(ValueError, match=r"unknown MolBindConfig field 'unimol'; tower keys: "
                                         r"\['bert', 'conformer', 'gin', 'pocket'\], other fields"):
        MolBindConfig.tiny(unimol=tiny.conformer)
    with pytest.raises(ValueError, match=r"unknown MolBindConfig field\(s\) \['pocket'\]; tower keys of "
                                         r"modalities \('graph', 'text'\): \['bert', 'gin'\]"):
        MolBindConfig.from_dict({"modalities": ["graph", "text"], "pocket": {"num_layers": 1}})
    with pytest.raises(ValueError, match="unknown modality 'audio'; known modalities: text, graph"):
        MolBindConfig.tiny(modalities=("text", "audio"))
    with pytest.raises(ValueError, match=r"modalities the model does not have: \['pocket'\]"):
        MolBindConfig(towers={"pocket": tiny.pocket}, modalities=("text",))


def test_embed_refuses_a_modality_the_model_lacks(model):
    batches, _ = make_batches(batch=4, shards=1)
    with pytest.raises(ValueError, match=r"this model has no 'audio' tower \(modalities: \('text', 'graph', "
                                         r"'conformer', 'pocket'\)\)"):
        model.embed("audio", batches["graph_text"].y)
    text_only = MolBind(MolBindConfig.tiny(modalities=("text",)), rngs=nnx.Rngs(0))
    assert not hasattr(text_only, "graph_encoder") and hasattr(text_only, "text_proj")
    with pytest.raises(ValueError, match=r"this model has no 'graph' tower \(modalities: \('text',\)\)"):
        text_only.embed("graph", batches["graph_text"].x)
    with pytest.raises(ValueError, match=r"no 'graph' tower"):
        text_only.pair_embeddings("graph_text", batches["graph_text"])


@pytest.mark.slow  # compiles tiny towers: ~5-10 s of CPU each
def test_bfloat16_model_gives_float32_embeddings():
    m = MolBind(MolBindConfig.tiny(dtype="bfloat16"), rngs=nnx.Rngs(1))
    batches, _ = make_batches(batch=4, shards=2)
    x, y, _ = jit_call(m, "pair_embeddings", "graph_text", batches["graph_text"])
    assert x.dtype == jnp.float32 and y.dtype == jnp.float32
    assert m.text_encoder.layers[0].intermediate.kernel.value.dtype == jnp.float32  # float32 params


def _loss_and_grads(model, batches, mesh, train, gather_gradient=True):
    """Functional NNX: (loss, updated non-parameter state), parameter gradients."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, batches):
        # copy=True: fresh Variables in this trace, so that dropout may advance its RNG count
        # and BatchNorm may update its statistics inside jax.grad.
        m = nnx.merge(graphdef, params, rest, copy=True)
        embs = {p: m.pair_embeddings(p, b, train=train) for p, b in batches.items()}
        total, _ = losses.molbind_loss(embs, mesh=mesh, gather_gradient=gather_gradient)
        return total, nnx.state(m, nnx.Not(nnx.Param))

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, rest, batches)


@pytest.mark.slow
def test_sharded_parameter_gradients_equal_single_device():
    """Train mode on 8 devices (batch rows and graph shards split over "data") equals one
    device on the same arrays: loss, every parameter gradient, the updated BN statistics.

    graph_text and conformer_pocket together exercise all four towers and heads (the two
    other pair types reuse them; the loss over four pairs is tested in test_losses.py).
    """
    model = MolBind(MolBindConfig.tiny(), rngs=nnx.Rngs(0))
    batches, _ = make_batches(batch=16, shards=8)
    batches = {p: batches[p] for p in ("graph_text", "conformer_pocket")}
    mesh = make_mesh(8)
    (val1, state1), g1 = _loss_and_grads(model, batches, None, True)
    (val8, state8), g8 = _loss_and_grads(model, global_batch(batches, mesh), mesh, True)
    assert rel_err(val8, val1) <= 1e-5

    flat1 = jax.tree_util.tree_leaves_with_path(g1)
    flat8 = dict(jax.tree_util.tree_leaves_with_path(g8))
    vec1 = np.concatenate([np.ravel(a) for _, a in flat1])
    vec8 = np.concatenate([np.ravel(flat8[p]) for p, _ in flat1])
    # The stated criterion, over all parameters: max |g8 - g1| / max |g1| <= 1e-5.
    assert rel_err(vec8, vec1) <= 1e-5
    scale = np.max(np.abs(vec1))
    for path, a in flat1:
        # Per leaf: rtol 1e-4 (small leaves summed with heavy cancellation, e.g. the Gaussian
        # means) plus atol 1e-6 of the largest gradient, for the analytically zero gradients
        # whose computed values are pure round-off: biases followed by train-mode BatchNorm
        # (GIN mlp_2), a per-head constant on every logit of a row (Uni-Mol gbf_proj_linear2
        # bias, BERT key bias).
        a, b = np.asarray(a), np.asarray(flat8[path])
        assert np.max(np.abs(b - a)) <= 1e-4 * np.max(np.abs(a)) + 1e-6 * scale, jax.tree_util.keystr(path)
    bn8 = dict(jax.tree_util.tree_leaves_with_path(state8))
    compared = 0
    for (path, a) in jax.tree_util.tree_leaves_with_path(state1):
        if "running_mean" in jax.tree_util.keystr(path) or "running_var" in jax.tree_util.keystr(path):
            assert rel_err(bn8[path], a) <= 1e-5, jax.tree_util.keystr(path)
            compared += 1
    assert compared == 2 * model.config.gin.num_layers
    assert np.any(np.asarray(state1["graph_encoder"]["batch_norms"][0]["running_mean"][...]) != 0)  # updated


# ------------------------------------------------------------------ MolBind .ckpt importer
def _numpy_pair_inputs(tokens, coords, vocab):
    real = tokens != 0
    pair = real[:, :, None] & real[:, None, :]
    et = np.where(pair, tokens[:, :, None] * vocab + tokens[:, None, :], 0)
    d = np.linalg.norm(coords[:, :, None] - coords[:, None], axis=-1) * pair
    return d.astype(np.float32), et.astype(np.int64)


@pytest.mark.slow
def test_import_molbind_ckpt_matches_torch(tmp_path, write_original_ckpt):
    import torch

    from molbind_jax.convert import molbind as convert

    # A tiny .ckpt as the original saves it (no buffers), from the torch reference of the
    # original Model with random weights (tests/models/conftest.py), and the GIN backbone .pth.
    ns = write_original_ckpt(tmp_path)
    ckpt, backbone, tm = ns.ckpt, ns.backbone, ns.ref
    model, report = convert.load(ckpt, gin_backbone=backbone, bert={"num_heads": 4}, unimol_pooling="original")
    assert model.config.embed_dim == 12 and model.config.gin.emb_dim == 16
    assert report.bn_stats.startswith("from the GIN backbone")
    ignored = report.parts["text_encoder"].ignored
    assert any("crossattention" in k for k in ignored) and any(k.startswith("cls.") for k in ignored)

    batches, graphs = make_batches(batch=4, shards=1, seed=5)
    b = batches["graph_text"]
    c = batches["conformer_pocket"]
    ours = {
        "graph": jit_call(model, "embed_graph", b.x),
        "text": jit_call(model, "embed_text", b.y.ids, b.y.mask),
        "conf": jit_call(model, "embed_conformer", c.x.tokens, c.x.coords),
        "pocket": jit_call(model, "embed_pocket", c.y.tokens, c.y.coords),
    }
    with torch.no_grad():
        x = torch.tensor(np.concatenate([g[0] for g in graphs]), dtype=torch.long)
        offs = np.cumsum([0] + [len(g[0]) for g in graphs])[:-1]
        ei = torch.tensor(np.concatenate([g[1] + o for g, o in zip(graphs, offs)], 1), dtype=torch.long)
        ea = torch.tensor(np.concatenate([g[2] for g in graphs]), dtype=torch.long)
        batch = torch.tensor(np.repeat(np.arange(len(graphs)), [len(g[0]) for g in graphs]))
        ref = {"graph": tm.embed_graph(x, ei, ea, batch),
               "text": tm.embed_text(torch.tensor(b.y.ids, dtype=torch.long),
                                     torch.tensor(b.y.mask, dtype=torch.long))}
        for key, fn, side, v in (("conf", tm.embed_conformer, c.x, 31), ("pocket", tm.embed_pocket, c.y, 10)):
            n = int(np.ceil((side.tokens != 0).sum(1).max() / 8) * 8)  # the original collater's length
            tokens, coords = side.tokens[:, :n], side.coords[:, :n]
            d, et = _numpy_pair_inputs(tokens, coords, v)
            ref[key] = fn(torch.tensor(tokens, dtype=torch.long), torch.tensor(d), torch.tensor(et))
    for key in ref:
        assert rel_err(ours[key], ref[key].numpy()) <= 1e-5, key

    # Without the backbone: a loud warning, statistics as initialised, graph embeddings differ.
    with pytest.warns(UserWarning, match="no GIN BatchNorm running statistics"):
        model2, report2 = convert.load(ckpt, bert={"num_heads": 4}, unimol_pooling="original")
    assert report2.bn_stats.startswith("MISSING")
    assert rel_err(jit_call(model2, "embed_graph", b.x), ref["graph"].numpy()) > 1e-3
    np.testing.assert_array_equal(np.asarray(model2.graph_encoder.batch_norms[0].running_var[...]), 1.0)


def test_import_molbind_ckpt_errors(tmp_path):
    import torch

    from molbind_jax.convert import molbind as convert
    from molbind_jax.convert.common import CheckpointError

    model = MolBind(MolBindConfig.tiny(), rngs=nnx.Rngs(0))
    # A state dict from our own (tiny) model would need the full layout; check the routing
    # errors, which do not depend on the towers: stray keys and missing head keys.
    with pytest.raises(CheckpointError, match="belong to no MolBind part:\n  model.temperature"):
        convert.assign(model, {"model.temperature": np.zeros(())}, "x.ckpt")
    with pytest.raises(CheckpointError, match="belong to no MolBind part:\n  optimizer.state"):
        convert.assign(model, {"optimizer.state": np.zeros(())}, "x.ckpt")
    bad = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"model.text_proj.weight": torch.zeros(3, 3)}}, bad)
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        convert.read_checkpoint(str(bad))


@pytest.mark.slow
def test_import_molbind_ckpt_strict_per_tower(tmp_path, write_original_ckpt):
    import torch

    from molbind_jax.convert import molbind as convert
    from molbind_jax.convert.common import CheckpointError

    ns = write_original_ckpt(tmp_path)
    ckpt, backbone = ns.ckpt, ns.backbone
    obj = torch.load(ckpt, weights_only=False)
    cases = {
        "unexpected": ("model.conf_encoder.encoder.layers.0.extra.weight", torch.zeros(2), "unexpected"),
        "wrong_shape": ("model.pro_proj.weight", torch.zeros(12, 31), "wrong shape"),
    }
    for name, (key, value, message) in cases.items():
        sd = dict(obj["state_dict"])
        sd[key] = value
        path = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": sd}, path)
        with pytest.raises(CheckpointError, match=message) as err:
            convert.load(str(path), gin_backbone=backbone, bert={"num_heads": 4})
        assert key.split(".", 2)[-1].split(".", 1)[-1] in str(err.value) or key in str(err.value)
    sd = dict(obj["state_dict"])
    del sd["model.ln_conf.bias"]
    torch.save({"state_dict": sd}, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"missing key\(s\):\n  model.ln_conf.bias"):
        convert.load(str(tmp_path / "missing.ckpt"), gin_backbone=backbone, bert={"num_heads": 4})


@pytest.mark.slow
def test_real_molecules_through_input_pipeline_sharded_equals_single():
    """Featurizers -> data.batching.collate_pair (8 graph shards, 2 padded rows) ->
    global_batch -> MolBind -> pair_infonce: 8 devices give the one-device loss."""
    from molbind_data.featurize.conformer import generate_conformers, unimol_input
    from molbind_data.featurize.graph import smiles_to_graph
    from molbind_jax.data.batching import collate_pair

    smiles = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "O=C=O", "CC(C)O", "C1CCCCC1", "CCCl",
              "NCC(=O)O", "CC#N", "COC", "CCS", "OCCO", "CC=C"]
    records = []
    for s in smiles:
        atoms_, coords, _ = generate_conformers(s, num_conformers=1)
        records.append({**smiles_to_graph(s), **unimol_input(atoms_, coords)})
    batch = collate_pair("graph_conformer", records, batch_size=16, num_shards=8)
    assert isinstance(batch, PairBatch) and isinstance(batch.x, GraphBatch) and isinstance(batch.y, AtomsBatch)
    assert batch.x.nodes.shape[0] == 8 and int(batch.mask.sum()) == 14
    model = MolBind(MolBindConfig.tiny(), rngs=nnx.Rngs(0))
    mesh = make_mesh(8)

    def loss(m, b, mesh):
        return losses.pair_infonce(*m.pair_embeddings("graph_conformer", b), mesh=mesh)[0]

    l8 = nnx.jit(lambda m, b: loss(m, b, mesh))(model, global_batch(batch, mesh))
    l1 = nnx.jit(lambda m, b: loss(m, b, None))(model, batch)
    assert np.isfinite(float(l1)) and rel_err(l8, l1) <= 1e-5
