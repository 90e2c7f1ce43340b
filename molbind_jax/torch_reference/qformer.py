"""PyTorch reference of MolBind's text tower: the BLIP-2 Q-Former `BertLMHeadModel` (spec 1c).

Used by the whole-model reference (`torch_reference.molbind`), the comparison harness, the
export back to PyTorch and the tests; never by training. Written from the spec and the
original's `model/bert.py` (MolBind/Code, a BLIP-2/MolCA copy), with the same module tree, so
`QFormer().state_dict()` has exactly the original's `Qformer.*` keys:

    bert.embeddings.{word_embeddings, position_embeddings, LayerNorm}, bert.embeddings.position_ids
    bert.encoder.layer.i.attention.self.{query,key,value}, .attention.output.{dense,LayerNorm}
    bert.encoder.layer.i.crossattention.*            (every `cross_attention_freq`-th layer; key
                                                      and value read `encoder_width` features)
    bert.encoder.layer.i.{intermediate,output}.*, .{intermediate_query,output_query}.*
    cls.predictions.{bias, transform.dense, transform.LayerNorm, decoder.weight, decoder.bias}

There is no token-type table (the Q-Former's BertEmbeddings has none, spec bug 11) and no
pooler. `cls.predictions.decoder.weight` is the word-embedding table itself and
`decoder.bias` is `cls.predictions.bias` itself (tied as in the original), so a state dict
lists each twice.

Only the text path is implemented (what MolBind runs, `Qformer.bert(ids, attention_mask)`):
bidirectional self-attention with the additive float32 mask `(1 - m) * -10000`, post-LN
layers, exact GELU, `last_hidden_state`. The query tokens, the cross-attention and the
`*_query` feed-forward only exist for strict loading.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -10000.0  # model/bert.py 796-799
_ACT = {"gelu": lambda x: F.gelu(x), "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class Embeddings(nn.Module):
    def __init__(self, vocab_size, hidden_size, max_position_embeddings, layer_norm_eps, dropout):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        # A persistent buffer in the original (transformers 4.28 era), dropped by its ckpt save.
        self.register_buffer("position_ids", torch.arange(max_position_embeddings).expand((1, -1)))

    def forward(self, input_ids):
        length = input_ids.size(1)
        h = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :length])
        return self.dropout(self.LayerNorm(h))


class SelfAttention(nn.Module):
    def __init__(self, hidden_size, num_heads, kv_width, dropout):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(kv_width, hidden_size)
        self.value = nn.Linear(kv_width, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x, mask):
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.size(0), ctx.size(1), -1)


class SelfOutput(nn.Module):
    """dense, dropout, LayerNorm(. + residual); also the feed-forward's `output`."""

    def __init__(self, n_in, hidden_size, layer_norm_eps, dropout):
        super().__init__()
        self.dense = nn.Linear(n_in, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, hidden_size, num_heads, kv_width, layer_norm_eps, dropout, attention_dropout):
        super().__init__()
        self.self = SelfAttention(hidden_size, num_heads, kv_width, attention_dropout)
        self.output = SelfOutput(hidden_size, hidden_size, layer_norm_eps, dropout)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, hidden_size, intermediate_size, act):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.act = _ACT[act]

    def forward(self, x):
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, index, *, hidden_size, num_heads, intermediate_size, layer_norm_eps, encoder_width,
                 cross_attention_freq, hidden_act, dropout, attention_dropout):
        super().__init__()
        att = dict(layer_norm_eps=layer_norm_eps, dropout=dropout, attention_dropout=attention_dropout)
        self.attention = Attention(hidden_size, num_heads, hidden_size, **att)
        if index % cross_attention_freq == 0:
            self.crossattention = Attention(hidden_size, num_heads, encoder_width, **att)
        self.intermediate = Intermediate(hidden_size, intermediate_size, hidden_act)
        self.output = SelfOutput(intermediate_size, hidden_size, layer_norm_eps, dropout)
        self.intermediate_query = Intermediate(hidden_size, intermediate_size, hidden_act)
        self.output_query = SelfOutput(intermediate_size, hidden_size, layer_norm_eps, dropout)

    def forward(self, x, mask):
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)  # query_length == 0: the text feed-forward only


class Encoder(nn.Module):
    def __init__(self, num_layers, **kw):
        super().__init__()
        self.layer = nn.ModuleList([Layer(i, **kw) for i in range(num_layers)])


class BertModel(nn.Module):
    def __init__(self, *, vocab_size, hidden_size, num_layers, max_position_embeddings, layer_norm_eps,
                 dropout, **layer_kw):
        super().__init__()
        self.embeddings = Embeddings(vocab_size, hidden_size, max_position_embeddings, layer_norm_eps, dropout)
        self.encoder = Encoder(num_layers, hidden_size=hidden_size, layer_norm_eps=layer_norm_eps,
                               dropout=dropout, **layer_kw)

    def forward(self, input_ids, attention_mask):
        """ids, mask [B,L] -> last_hidden_state [B,L,H] (is_decoder=False, no query tokens)."""
        if input_ids.size(1) > self.embeddings.position_ids.size(1):
            raise ValueError(f"sequence length {input_ids.size(1)} exceeds the position table "
                             f"({self.embeddings.position_ids.size(1)})")
        h = self.embeddings(input_ids)
        mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * MASK_VALUE
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return h


class PredictionHeadTransform(nn.Module):
    def __init__(self, hidden_size, layer_norm_eps):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)


class LMPredictionHead(nn.Module):
    def __init__(self, hidden_size, vocab_size, layer_norm_eps):
        super().__init__()
        self.transform = PredictionHeadTransform(hidden_size, layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.decoder.bias = self.bias  # tied, as the original


class OnlyMLMHead(nn.Module):
    def __init__(self, hidden_size, vocab_size, layer_norm_eps):
        super().__init__()
        self.predictions = LMPredictionHead(hidden_size, vocab_size, layer_norm_eps)


class QFormer(nn.Module):
    """`Qformer` of the original `Model` (a BertLMHeadModel). Defaults: SciBERT with the
    `[DEC]` row (vocab 31091), 12 x 768, 12 heads, cross-attention to 300-wide GIN features on
    every second layer, as `bind.py` builds it."""

    def __init__(self, vocab_size: int = 31091, hidden_size: int = 768, num_layers: int = 12,
                 num_heads: int = 12, intermediate_size: int = 3072, max_position_embeddings: int = 512,
                 layer_norm_eps: float = 1e-12, encoder_width: int = 300, cross_attention_freq: int = 2,
                 hidden_act: str = "gelu", dropout: float = 0.1, attention_dropout: float = 0.1):
        super().__init__()
        if hidden_act not in _ACT:
            raise ValueError(f"hidden_act {hidden_act!r} not supported; expected one of {sorted(_ACT)}")
        if cross_attention_freq < 1:
            raise ValueError(f"cross_attention_freq must be >= 1, got {cross_attention_freq}")
        self.bert = BertModel(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                              max_position_embeddings=max_position_embeddings, layer_norm_eps=layer_norm_eps,
                              dropout=dropout, num_heads=num_heads, intermediate_size=intermediate_size,
                              encoder_width=encoder_width, cross_attention_freq=cross_attention_freq,
                              hidden_act=hidden_act, attention_dropout=attention_dropout)
        self.cls = OnlyMLMHead(hidden_size, vocab_size, layer_norm_eps)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tied

    def init_bert_style_(self, generator: torch.Generator | None = None) -> "QFormer":
        """BERT's `_init_weights` on every module: Linear/Embedding weights N(0, 0.02), biases 0,
        LayerNorm 1/0; then every `*_query` module copied from its non-query counterpart (as
        the original's constructor does). Deterministic given `generator`."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    m.weight.normal_(0.0, 0.02, generator=generator)
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()
            self.cls.predictions.bias.zero_()
            self.copy_query_parts_()
        return self

    def copy_query_parts_(self) -> None:
        """`intermediate_query`/`output_query` := copies of `intermediate`/`output` (contrastive.py 81-85)."""
        with torch.no_grad():
            for layer in self.bert.encoder.layer:
                layer.intermediate_query.load_state_dict(layer.intermediate.state_dict())
                layer.output_query.load_state_dict(layer.output.state_dict())
