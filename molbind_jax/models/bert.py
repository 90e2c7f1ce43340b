"""BERT text encoder in Flax NNX (the spec's section 1c), numerically faithful to PyTorch.

The original text tower is the `bert` part of a BLIP-2 Q-Former initialised from SciBERT. It
is a plain post-LN BERT with two deviations that matter for parity:

* no token-type embedding (`use_token_type=False`): the Q-Former copy of BertEmbeddings has
  no token-type table, so SciBERT's type-0 row is silently dropped;
* the attention mask is the additive `(1 - m) * -10000.0` in float32, not `-inf`.

With `use_token_type=True` the module is a stock HF `BertModel` (without the pooler) and adds
the type embeddings like it does (type 0 when no `token_type_ids` are given).

Precision: `dtype` is the compute dtype of the matmuls (bfloat16 for speed); parameters stay
in `param_dtype` (float32). LayerNorm, softmax and the residual stream are float32 whatever
`dtype` is, which is what PyTorch autocast does for the original.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from molbind_jax.models.layers import attention, check_dropout_rng, dropout, site_key

# The original's additive mask value (model/bert.py 796-799), applied in float32.
MASK_VALUE = -10000.0

# BertConfig.attention_impl values. Where the attention probabilities get no dropout (eval
# mode, or attention_dropout == 0), None, "xla" and "cudnn" call jax.nn.dot_product_attention
# with that `implementation`: None is JAX's choice (XLA in JAX 0.10; it may pick cuDNN on GPUs
# in later versions), "xla" the plain XLA softmax(q.k + bias).v (float32 logits and softmax),
# "cudnn" cuDNN's fused flash attention (NVIDIA GPUs, bf16/fp16 only; the padding mask goes in
# as its bias). jax.nn.dot_product_attention takes no dropout key, so a training forward with
# attention_dropout > 0 always runs "custom": layers.attention, the written-out float32
# softmax with hash dropout on the probabilities and its lean custom gradient. The BERT mask
# is a pure padding bias, which is what lets it use the fused kernels at all; the Uni-Mol
# towers cannot (their [B, H, N, N] pair bias is also an output, docs/encoders.md).
ATTENTION_IMPLS = (None, "xla", "cudnn", "custom")

_GELU = {
    "gelu": False,  # exact erf GELU, as the original and SciBERT
    "gelu_new": True,  # tanh approximation, for BERT variants that use it
    "gelu_pytorch_tanh": True,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and numerics of a BERT encoder.

    `vocab_size` for a real checkpoint comes from the checkpoint itself (the MolBind ckpt has
    31091 rows: SciBERT's 31090 plus the Q-Former's `[DEC]`), see `convert/bert.py`.
    """

    vocab_size: int = 31090
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    use_token_type: bool = True
    hidden_act: str = "gelu"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    # Attention core (see ATTENTION_IMPLS): None, "xla" or "cudnn" route through
    # jax.nn.dot_product_attention where no attention dropout is drawn; "custom" is always
    # layers.attention.
    attention_impl: str | None = None
    dropout_rng: str = "hash"  # dropout mask generator, layers.DROPOUT_RNGS

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_act not in _GELU:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {sorted(_GELU)}")
        check_dropout_rng(self.dropout_rng)
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def tiny(cls, **overrides) -> "BertConfig":
        """A few-thousand-parameter BERT for tests."""
        kw = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def scibert(cls, **overrides) -> "BertConfig":
        """allenai/scibert_scivocab_uncased as the original text tower uses it (no token types)."""
        kw = dict(vocab_size=31090, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                  max_position_embeddings=512, use_token_type=False)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides) -> "BertConfig":
        """Builds a config from an HF `config.json` (a dict, the file, or its directory)."""
        if not isinstance(config, Mapping):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.exists(path):
                raise FileNotFoundError(f"no HF config at {path}")
            with open(path) as f:
                config = json.load(f)
        pos_type = config.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"position_embedding_type {pos_type!r} is not supported (only 'absolute')")
        kw = dict(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            max_position_embeddings=config.get("max_position_embeddings", 512),
            type_vocab_size=config.get("type_vocab_size", 2),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            dropout=config.get("hidden_dropout_prob", 0.1),
            attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
            hidden_act=config.get("hidden_act", "gelu"),
        )
        kw.update(overrides)
        return cls(**kw)


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # float32 compute and params regardless of cfg.dtype.
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=jnp.float32,
                         param_dtype=jnp.float32, rngs=rngs)


def _linear(cfg: BertConfig, n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    init = nnx.initializers.normal(0.02)  # BERT's initializer_range
    return nnx.Linear(n_in, n_out, dtype=cfg.dtype, param_dtype=cfg.param_dtype, kernel_init=init, rngs=rngs)


class BertEmbeddings(nnx.Module):
    """word + absolute position (+ token type) embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=cfg.param_dtype,
                                         embedding_init=init, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                             param_dtype=cfg.param_dtype, embedding_init=init, rngs=rngs)
        self.token_type_embeddings = (
            nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, param_dtype=cfg.param_dtype,
                      embedding_init=init, rngs=rngs)
            if cfg.use_token_type else None
        )
        self.layer_norm = _layer_norm(cfg, rngs)

    def __call__(self, input_ids, token_type_ids, key=None):
        length = input_ids.shape[1]
        h = self.word_embeddings(input_ids).astype(jnp.float32)
        # Summation order as HF BertEmbeddings (word + type, then + position): float32 sums
        # are not associative and the padded rows amplify such differences.
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            h = h + self.token_type_embeddings(token_type_ids).astype(jnp.float32)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given to a BERT built with use_token_type=False")
        h = h + self.position_embeddings.embedding[...][:length].astype(jnp.float32)[None]
        return dropout(self.layer_norm(h), self.cfg.dropout, key, impl=self.cfg.dropout_rng)


class BertLayer(nnx.Module):
    """One post-LN transformer layer: LN(x + attn(x)), then LN(a + ffn(a)).

    Holds parameters only: the dropout key comes in explicitly (None in eval mode) and is
    folded per dropout site, so that the encoder can stack the layers and scan them.
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h = cfg.hidden_size
        self.query = _linear(cfg, h, h, rngs)
        self.key = _linear(cfg, h, h, rngs)
        self.value = _linear(cfg, h, h, rngs)
        self.attention_output = _linear(cfg, h, h, rngs)
        self.attention_layer_norm = _layer_norm(cfg, rngs)
        self.intermediate = _linear(cfg, h, cfg.intermediate_size, rngs)
        self.output = _linear(cfg, cfg.intermediate_size, h, rngs)
        self.output_layer_norm = _layer_norm(cfg, rngs)

    def _drop(self, x, rate, key, site):
        return dropout(x, rate, site_key(key, site), impl=self.cfg.dropout_rng)

    def _attention(self, x, bias, key, shape):
        cfg = self.cfg
        b, length = shape
        split = lambda t: t.reshape(b, length, cfg.num_heads, cfg.head_dim)  # [B,L,heads,dh]
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if cfg.attention_impl != "custom" and (key is None or cfg.attention_dropout == 0.0):
            impl_bias = bias.astype(q.dtype) if cfg.attention_impl == "cudnn" else bias
            out = jax.nn.dot_product_attention(q, k, v, bias=impl_bias, implementation=cfg.attention_impl)
        else:
            # jax.nn.dot_product_attention has no dropout on the probabilities, so training with
            # attention dropout (or "custom") spells the same computation out (float32 logits
            # and softmax).
            q = q * jnp.asarray(cfg.head_dim ** -0.5, q.dtype)
            out, _ = attention(q, k, v, bias, dropout_rate=cfg.attention_dropout, key=site_key(key, 0),
                               impl=cfg.dropout_rng)
        return out.reshape(b * length, cfg.hidden_size)

    def __call__(self, x, bias, key=None):
        # The token-wise parts run on [B*L, H]: XLA:CPU's matmuls (and their weight gradients,
        # which contract one axis instead of two) are ~15% faster in 2-D.
        b, length, hidden = x.shape
        x = x.reshape(b * length, hidden)
        attn = self.attention_output(self._attention(x, bias, key, (b, length)))
        attn = self._drop(attn, self.cfg.dropout, key, 1).astype(jnp.float32)
        a = self.attention_layer_norm(attn + x)
        y = jax.nn.gelu(self.intermediate(a), approximate=_GELU[self.cfg.hidden_act])
        y = self._drop(self.output(y), self.cfg.dropout, key, 2).astype(jnp.float32)
        return self.output_layer_norm(y + a).reshape(b, length, hidden)


class BertEncoder(nnx.Module):
    """BERT without pooler: `(input_ids, attention_mask) -> last_hidden_state [B,L,H]` (float32).

    The layers are a Python list run in a loop (not a scanned stack as the Uni-Mol towers):
    at 6-12 layers the unrolled program ran about 15% faster on XLA:CPU than a scanned one,
    which compiled only a few seconds sooner (docs/performance.md).
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        # Checked here, not in BertConfig: MolBind sets the tower's dtype when it builds it.
        if config.attention_impl == "cudnn" and jnp.dtype(config.dtype) not in (jnp.bfloat16, jnp.float16):
            raise ValueError(f"attention_impl='cudnn' (cuDNN flash attention, NVIDIA GPUs) needs dtype bfloat16 "
                             f"or float16, got {jnp.dtype(config.dtype).name}")
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.dropout_rngs = rngs["dropout"].fork()  # one draw per training forward

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, train: bool = False):
        cfg = self.config
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        # [B,1,1,L] additive mask in float32, broadcast over heads and queries.
        bias = (1.0 - attention_mask.astype(jnp.float32)) * MASK_VALUE
        bias = bias[:, None, None, :]
        key = self.dropout_rngs() if train else None
        h = self.embeddings(input_ids, token_type_ids, site_key(key, 0))
        for i, layer in enumerate(self.layers):
            h = layer(h, bias, site_key(key, i + 1))
        return h
