"""Uni-Mol encoder: parity with the PyTorch reference (molecule and pocket dictionaries),
`pair_inputs` against the original dataset + collater arrays, padding edge cases (no NaN),
and the `.pt` + dictionary importer's error messages."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from scipy.spatial import distance_matrix

from molbind_data.featurize.dictionaries import MOL_SYMBOLS, POCKET_SYMBOLS
from molbind_jax.convert import unimol as convert_unimol
from molbind_jax.convert.common import CheckpointError
from molbind_jax.models import layers
from molbind_jax.models.unimol import UniMolConfig, UniMolEncoder, pair_inputs
from molbind_jax.torch_reference.unimol import UniMolEncoder as TorchUniMol

TINY = dict(encoder_layers=2, embed_dim=32, ffn_embed_dim=64, attention_heads=4, num_kernels=16)


# ----------------------------------------------------------------------------- helpers
def random_molecules(rng, sizes, vocab_size):
    """Per-example arrays as the original dataset yields them: [CLS] atoms [SEP], centred
    float32 coordinates with [CLS]/[SEP] at the origin."""
    toks, coords = [], []
    for n in sizes:
        atoms = rng.integers(4, vocab_size - 1, n)  # real atom ids, no specials, no [MASK]
        c = rng.normal(scale=1.5, size=(n, 3)).astype(np.float32)
        c = (c - c.mean(0)).astype(np.float32)
        toks.append(np.concatenate([[1], atoms, [2]]).astype(np.int64))
        coords.append(np.concatenate([np.zeros((1, 3)), c, np.zeros((1, 3))]).astype(np.float32))
    return toks, coords


def collate(toks, coords, vocab_size, multiple=8):
    """The original: per-example ET = tok_i*V + tok_j, D = scipy distance_matrix (float64)
    cast to float32, then D3Collater pads tokens, ET and D with 0 to a multiple of 8."""
    n = -(-max(len(t) for t in toks) // multiple) * multiple
    b = len(toks)
    out = dict(src_tokens=np.zeros((b, n), np.int64), src_distance=np.zeros((b, n, n), np.float32),
               src_edge_type=np.zeros((b, n, n), np.int64), coords=np.zeros((b, n, 3), np.float32))
    for i, (t, c) in enumerate(zip(toks, coords)):
        m = len(t)
        out["src_tokens"][i, :m] = t
        out["src_distance"][i, :m, :m] = distance_matrix(c, c).astype(np.float32)
        out["src_edge_type"][i, :m, :m] = t[:, None] * vocab_size + t[None, :]
        out["coords"][i, :m] = c
    return out


def torch_model(vocab_size, seed, **sizes):
    """A randomly initialised reference whose edge-type tables and LayerNorms are not at
    their constant init (so a wrong edge-type index or LN mapping would show)."""
    torch.manual_seed(seed)
    model = TorchUniMol(vocab_size, **sizes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "gbf.mul.weight":
                p.uniform_(0.5, 1.5)
            elif name == "gbf.bias.weight":
                p.uniform_(-0.5, 0.5)
            elif "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def write_checkpoint(model, path, extra=None):
    state = dict(model.state_dict())
    state.update(extra or {})
    torch.save({"model": state, "args": None}, path)
    return str(path)


def write_dictionary(symbols, path):
    # Uni-Mol dict.txt: one "symbol count" per line, without [MASK] (appended on load).
    path.write_text("".join(f"{s} 1\n" for s in symbols if s != "[MASK]"))
    return str(path)


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.fixture
def tiny_mol(tmp_path):
    model = torch_model(31, 0, **TINY)
    heads = {"lm_head.dense.weight": torch.zeros(32, 32), "dist_head.dense.weight": torch.zeros(4, 4),
             "pair2coord_proj.linear1.weight": torch.zeros(4, 4),
             "encoder.final_head_layer_norm.weight": torch.zeros(4)}
    return model, write_checkpoint(model, tmp_path / "mol_tiny.pt", heads)


# ----------------------------------------------------------------------------- parity
def test_tiny_molecule_parity_with_padding(tiny_mol, tmp_path):
    _, path = tiny_mol
    dict_path = write_dictionary(MOL_SYMBOLS, tmp_path / "dict.txt")
    module, report = convert_unimol.load(path, dict_path)
    assert sorted(report.ignored) == ["dist_head.dense.weight", "encoder.final_head_layer_norm.weight",
                                      "lm_head.dense.weight", "pair2coord_proj.linear1.weight"]
    toks, coords = random_molecules(np.random.default_rng(0), [5, 13, 2], 31)
    inputs = collate(toks, coords, 31)
    assert inputs["src_tokens"].shape == (3, 16)
    ours = convert_unimol.run_flax(module, inputs)["encoder_rep"]
    ref = convert_unimol.run_torch(path, inputs, dict_path)["encoder_rep"]
    assert np.isfinite(ours).all()
    assert rel_err(ours, ref) <= 1e-5
    # The layers are one stacked module; the exporter's view gives back the original arrays.
    assert module.layers.fc1.kernel[...].shape == (2, 32, 64)
    exported = convert_unimol.torch_arrays(module)
    want = {k: v.numpy() for k, v in tiny_mol[0].state_dict().items()}
    assert sorted(exported) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_tiny_parity_without_padding(tiny_mol):
    """No [PAD] anywhere: the original switches padding off (pad=None); ours masks nothing."""
    _, path = tiny_mol
    toks, coords = random_molecules(np.random.default_rng(1), [6, 6], 31)  # 8 tokens each
    inputs = collate(toks, coords, 31)
    assert (inputs["src_tokens"] != 0).all()
    module, _ = convert_unimol.load(path)
    ours = convert_unimol.run_flax(module, inputs)["encoder_rep"]
    ref = convert_unimol.run_torch(path, inputs)["encoder_rep"]
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("kind,sizes", [("molecule", [9, 30, 17, 4]), ("pocket", [21, 10])])
def test_full_size_parity_from_file(tmp_path, kind, sizes):
    symbols = MOL_SYMBOLS if kind == "molecule" else POCKET_SYMBOLS
    v = len(symbols)
    model = torch_model(v, 7)  # 15 layers, 512 wide, 64 heads, 128 kernels
    path = write_checkpoint(model, tmp_path / f"{kind}.pt", {"lm_head.bias": torch.zeros(v)})
    dict_path = write_dictionary(symbols, tmp_path / f"{kind}_dict.txt")
    module, _ = convert_unimol.load(path, dict_path)
    cfg = module.config
    assert (cfg.num_layers, cfg.embed_dim, cfg.ffn_dim, cfg.num_heads, cfg.num_kernels, cfg.vocab_size) == \
        (15, 512, 2048, 64, 128, v)
    toks, coords = random_molecules(np.random.default_rng(7), sizes, v)
    inputs = collate(toks, coords, v)
    ours = convert_unimol.run_flax(module, inputs)["encoder_rep"]
    ref = convert_unimol.run_torch(path, inputs, dict_path)["encoder_rep"]
    err = rel_err(ours, ref)
    print(f"Uni-Mol {kind} full-size float32 parity, batch {inputs['src_tokens'].shape}: max rel err {err:.2e}")
    assert np.isfinite(ours).all() and err <= 1e-5


# ----------------------------------------------------------------------------- layer stack
def _padded_pair_bias(rng, b, h, n, pad_from):
    bias = rng.normal(size=(b, h, n, n)).astype(np.float32)
    bias[0, :, :, pad_from:] = -np.inf  # padded key columns of example 0
    return jnp.asarray(bias)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_scanned_stack_equals_a_loop_and_carries_the_pair_bias():
    """The scan over the stacked layers == calling each layer in turn, in eval and train mode:
    x and the pair representation (each layer's pre-softmax logits, the next one's bias) are
    carried, and the -inf padded key columns persist through every layer."""
    cfg = UniMolConfig.tiny(num_layers=3)
    module = UniMolEncoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(2, 8, cfg.embed_dim)).astype(np.float32))
    bias = _padded_pair_bias(rng, 2, cfg.num_heads, 8, 5)
    step = lambda layer, carry, key: layer(*carry, key)
    slices = [layers.layer_slice(module.layers, i) for i in range(cfg.num_layers)]

    @jax.jit
    def loop(x, bias, keys):
        for i, layer in enumerate(slices):
            x, bias = layer(x, bias, None if keys is None else keys[i])
        return x, bias

    scan = jax.jit(lambda x, b, k: layers.scan_layers(module.layers, step, (x, b), k))
    for keys in (None, jax.random.split(jax.random.key(2), cfg.num_layers)):
        got_x, got_bias = scan(x, bias, keys)
        want_x, want_bias = loop(x, bias, keys)
        np.testing.assert_allclose(np.asarray(got_x), np.asarray(want_x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got_bias), np.asarray(want_bias), rtol=1e-5, atol=1e-5)
        assert np.isneginf(np.asarray(got_bias)[0, :, :, 5:]).all()
        assert np.isfinite(np.asarray(got_bias)[0, :, :, :5]).all() and np.isfinite(np.asarray(got_bias)[1]).all()
        # The bias really moved: the carried logits are not the initial bias.
        assert not np.allclose(np.asarray(got_bias)[1], np.asarray(bias)[1])


@pytest.mark.slow  # three backward compiles of the tiny tower, ~10 s of CPU
def test_remat_options_give_the_same_gradients():
    toks, coords = random_molecules(np.random.default_rng(10), [4, 9], 31)
    batch = collate(toks, coords, 31)
    tokens = batch["src_tokens"]
    dist, et = pair_inputs(tokens, batch["coords"], 31)
    grads = {}
    for remat in ("none", "full", "dots"):
        module = UniMolEncoder(UniMolConfig.tiny(num_layers=3, remat=remat), rngs=nnx.Rngs(0, dropout=1))
        loss = lambda m: jnp.sum(jnp.where((tokens != 0)[..., None], m(tokens, dist, et, train=True), 0.0) ** 2)
        grads[remat] = nnx.state(nnx.jit(nnx.grad(loss))(module), nnx.Param)
    ref = jax.tree.leaves(grads["none"])
    assert any(np.abs(np.asarray(g)).max() > 0 for g in ref)
    for remat in ("full", "dots"):
        for a, b in zip(jax.tree.leaves(grads[remat]), ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=remat)
    with pytest.raises(ValueError, match="remat"):
        UniMolConfig.tiny(remat="everything")
    assert UniMolConfig.tiny(remat=True).remat == "full"


# ----------------------------------------------------------------------------- pair inputs
@pytest.mark.parametrize("vocab_size", [31, 10])
def test_pair_inputs_equal_collater_arrays(vocab_size):
    toks, coords = random_molecules(np.random.default_rng(2), [3, 11, 1, 7], vocab_size)
    want = collate(toks, coords, vocab_size)
    dist, et = jax.jit(pair_inputs, static_argnums=2)(want["src_tokens"], want["coords"], vocab_size)
    assert dist.dtype == jnp.float32 and et.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(et), want["src_edge_type"])
    # float32 arithmetic vs the original's float64 distance_matrix: equal up to rounding.
    np.testing.assert_allclose(np.asarray(dist), want["src_distance"], rtol=1e-6, atol=1e-6)
    pad = want["src_tokens"] == 0
    assert (np.asarray(dist)[pad] == 0).all() and (np.asarray(et)[pad] == 0).all()
    assert (np.asarray(dist).transpose(0, 2, 1)[pad] == 0).all()


# ----------------------------------------------------------------------------- padding cases
def test_all_padding_row_gives_no_nan_and_leaves_others_alone(tiny_mol):
    module, _ = convert_unimol.load(tiny_mol[1])
    toks, coords = random_molecules(np.random.default_rng(3), [5, 9], 31)
    inputs = collate(toks, coords, 31)
    filler = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in inputs.items()}  # an all-[PAD] example
    rep = convert_unimol.run_flax(module, filler)["encoder_rep"]
    assert np.isfinite(rep).all()
    base = convert_unimol.run_flax(module, inputs)["encoder_rep"]
    np.testing.assert_allclose(rep[:2], base, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # compiling the backward pass costs ~5 s of CPU
def test_train_mode_dropout_and_finite_gradients():
    cfg = UniMolConfig.tiny()
    module = UniMolEncoder(cfg, rngs=nnx.Rngs(0, dropout=1))
    toks, coords = random_molecules(np.random.default_rng(4), [4, 10], 31)
    tokens = collate(toks, coords, 31)["src_tokens"]
    dist, et = pair_inputs(tokens, collate(toks, coords, 31)["coords"], 31)
    real = (tokens != 0)[..., None]

    def loss(m):
        return jnp.sum(jnp.where(real, m(tokens, dist, et, train=True), 0.0) ** 2)

    grads = nnx.jit(nnx.grad(loss))(module)  # jitted: eager autodiff costs tens of seconds
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)
    train_forward = nnx.jit(lambda m: m(tokens, dist, et, train=True))
    a, b = train_forward(module), train_forward(module)
    assert not np.allclose(np.asarray(a), np.asarray(b))  # dropout is on and draws fresh masks


def test_bfloat16_option_runs_close(tiny_mol):
    toks, coords = random_molecules(np.random.default_rng(5), [6, 12], 31)
    inputs = collate(toks, coords, 31)
    f32 = convert_unimol.run_flax(convert_unimol.load(tiny_mol[1])[0], inputs)["encoder_rep"]
    m16, _ = convert_unimol.load(tiny_mol[1], dtype=jnp.bfloat16)
    rep = convert_unimol._eval_forward(m16, inputs["src_tokens"], inputs["src_distance"], inputs["src_edge_type"])
    assert rep.dtype == jnp.bfloat16
    assert rel_err(np.asarray(rep, np.float32), f32) < 5e-2


# ----------------------------------------------------------------------------- bad checkpoints
def test_dictionary_of_the_wrong_size(tiny_mol, tmp_path):
    wrong = write_dictionary(POCKET_SYMBOLS, tmp_path / "dict_coarse.txt")
    with pytest.raises(CheckpointError, match=r"10 symbols.*31 rows"):
        convert_unimol.load(tiny_mol[1], wrong)


def test_truncated_checkpoint(tiny_mol, tmp_path):
    data = open(tiny_mol[1], "rb").read()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_unimol.load(str(bad))


@pytest.mark.parametrize("key,value,needle", [
    ("encoder.layers.1.fc1.weight", torch.zeros(64, 31), r"(?s)wrong shape.*encoder.layers.1.fc1.weight"),
    ("gbf.mul.weight", torch.zeros(30 * 30, 1), r"(?s)wrong shape.*gbf.mul.weight"),
    ("encoder.layers.0.self_attn.out_proj.bias", None, r"(?s)missing key.*encoder.layers.0.self_attn.out_proj.bias"),
    ("encoder.layers.0.self_attn.rotary.weight", torch.zeros(3), r"(?s)unexpected key.*rotary"),
])
def test_bad_state_dicts_are_named(tiny_mol, tmp_path, key, value, needle):
    state = torch.load(tiny_mol[1], weights_only=True)["model"]
    if value is None:
        del state[key]
    else:
        state[key] = value
    path = tmp_path / "bad.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=needle):
        convert_unimol.load(str(path))


def test_not_a_unimol_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"x_embedding1.weight": torch.zeros(3, 3)}}, path)
    with pytest.raises(CheckpointError, match="embed_tokens.weight"):
        convert_unimol.load(str(path))


def test_encoder_inside_a_molbind_checkpoint(tiny_mol, tmp_path):
    """A Lightning .ckpt holds two Uni-Mol towers: the prefix picks one, none is ambiguous."""
    state = torch.load(tiny_mol[1], weights_only=True)["model"]
    pocket = torch_model(10, 1, **TINY).state_dict()
    wrapped = {**{f"model.conf_encoder.{k}": v for k, v in state.items()},
               **{f"model.pro_encoder.{k}": v for k, v in pocket.items()}}
    path = tmp_path / "molbind.ckpt"
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="several Uni-Mol encoders"):
        convert_unimol.load(str(path))
    module, report = convert_unimol.load(str(path), prefix="model.pro_encoder.")
    assert module.config.vocab_size == 10
    assert "model.conf_encoder.embed_tokens.weight" in report.ignored
    toks, coords = random_molecules(np.random.default_rng(6), [4, 7], 10)
    inputs = collate(toks, coords, 10)
    ours = convert_unimol.run_flax(module, inputs)["encoder_rep"]
    ref = convert_unimol.run_torch(str(path), inputs, prefix="model.pro_encoder.")["encoder_rep"]
    assert rel_err(ours, ref) <= 1e-5
