"""PyTorch reference of MolBind's Uni-Mol encoder (spec section 1b), written from the spec.

Used by the importer's `run_torch`, `compare.py` and the tests, never by training. Parameter
names follow Uni-Mol/Uni-Core, so `state_dict()` has the original key layout
(`embed_tokens.weight`, `gbf.means.weight`, `gbf_proj.linear1.weight`,
`encoder.layers.l.self_attn.in_proj.weight`, ...) and a Uni-Mol `.pt` (`['model']`) loads
into it once the pre-training heads are dropped.

The forward follows the original's layout, independently of the Flax code: the pair bias
lives as [B*H, N, N] (batch-major, head-minor), `pad = None` when the batch has no [PAD],
-inf is written into padded key columns in place, and each layer returns its pre-softmax
logits as the next layer's bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian(x, mean, std):
    # The original is @torch.jit.script'ed (deprecated in recent torch); same arithmetic.
    pi = 3.14159
    a = (2 * pi) ** 0.5
    return torch.exp(-0.5 * (((x - mean) / std) ** 2)) / (a * std)


class GaussianLayer(nn.Module):
    def __init__(self, K: int = 128, edge_types: int = 1024):
        super().__init__()
        self.K = K
        self.means = nn.Embedding(1, K)
        self.stds = nn.Embedding(1, K)
        self.mul = nn.Embedding(edge_types, 1)
        self.bias = nn.Embedding(edge_types, 1)
        nn.init.uniform_(self.means.weight, 0, 3)
        nn.init.uniform_(self.stds.weight, 0, 3)
        nn.init.constant_(self.bias.weight, 0)
        nn.init.constant_(self.mul.weight, 1)

    def forward(self, x, edge_type):
        mul = self.mul(edge_type).type_as(x)
        bias = self.bias(edge_type).type_as(x)
        x = mul * x.unsqueeze(-1) + bias
        x = x.expand(-1, -1, -1, self.K)
        mean = self.means.weight.float().view(-1)
        std = self.stds.weight.float().view(-1).abs() + 1e-5
        return gaussian(x.float(), mean, std).type_as(self.means.weight)


class NonLinearHead(nn.Module):
    def __init__(self, input_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = input_dim if hidden is None else hidden
        self.linear1 = nn.Linear(input_dim, hidden)
        self.linear2 = nn.Linear(hidden, out_dim)

    def forward(self, x):
        return self.linear2(F.gelu(self.linear1(x)))


class SelfMultiheadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.1):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query, attn_bias):
        bsz, tgt_len, embed_dim = query.size()
        q, k, v = self.in_proj(query).chunk(3, dim=-1)

        def heads(t):
            return (t.view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()
                    .view(bsz * self.num_heads, -1, self.head_dim))

        q = heads(q) * self.scaling
        k, v = heads(k), heads(v)
        attn_weights = torch.bmm(q, k.transpose(1, 2))
        attn_weights += attn_bias
        attn = F.dropout(F.softmax(attn_weights.float(), dim=-1).type_as(attn_weights), self.dropout,
                         self.training)
        o = torch.bmm(attn, v)
        o = o.view(bsz, self.num_heads, tgt_len, self.head_dim).transpose(1, 2).contiguous()
        return self.out_proj(o.view(bsz, tgt_len, embed_dim)), attn_weights


class TransformerEncoderLayer(nn.Module):
    def __init__(self, embed_dim=512, ffn_embed_dim=2048, attention_heads=64, dropout=0.1,
                 attention_dropout=0.1, activation_dropout=0.0):
        super().__init__()
        self.dropout = dropout
        self.activation_dropout = activation_dropout
        self.self_attn = SelfMultiheadAttention(embed_dim, attention_heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_embed_dim)
        self.fc2 = nn.Linear(ffn_embed_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x, attn_bias):
        residual = x
        x, attn_weights = self.self_attn(self.self_attn_layer_norm(x), attn_bias)
        x = residual + F.dropout(x, self.dropout, self.training)
        residual = x
        x = F.gelu(self.fc1(self.final_layer_norm(x)))
        x = self.fc2(F.dropout(x, self.activation_dropout, self.training))
        x = residual + F.dropout(x, self.dropout, self.training)
        return x, attn_weights


class TransformerEncoderWithPair(nn.Module):
    def __init__(self, encoder_layers=15, embed_dim=512, ffn_embed_dim=2048, attention_heads=64,
                 emb_dropout=0.1, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0):
        super().__init__()
        self.emb_dropout = emb_dropout
        self.emb_layer_norm = nn.LayerNorm(embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList([
            TransformerEncoderLayer(embed_dim, ffn_embed_dim, attention_heads, dropout, attention_dropout,
                                    activation_dropout)
            for _ in range(encoder_layers)])

    def forward(self, emb, attn_mask, padding_mask):
        bsz, seq_len = emb.size(0), emb.size(1)
        x = F.dropout(self.emb_layer_norm(emb), self.emb_dropout, self.training)
        if padding_mask is not None:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
            attn_mask = attn_mask.view(bsz, -1, seq_len, seq_len)
            attn_mask.masked_fill_(padding_mask.unsqueeze(1).unsqueeze(2).to(torch.bool), float("-inf"))
            attn_mask = attn_mask.view(-1, seq_len, seq_len)
        for layer in self.layers:
            x, attn_mask = layer(x, attn_mask)
        return self.final_layer_norm(x)


class UniMolEncoder(nn.Module):
    """forward(src_tokens, src_distance, src_edge_type) -> encoder_rep [B,N,D]."""

    def __init__(self, vocab_size: int = 31, encoder_layers: int = 15, embed_dim: int = 512,
                 ffn_embed_dim: int = 2048, attention_heads: int = 64, num_kernels: int = 128,
                 emb_dropout=0.1, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0):
        super().__init__()
        self.padding_idx = 0
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim, self.padding_idx)
        self.encoder = TransformerEncoderWithPair(encoder_layers, embed_dim, ffn_embed_dim, attention_heads,
                                                  emb_dropout, dropout, attention_dropout, activation_dropout)
        self.gbf = GaussianLayer(num_kernels, vocab_size * vocab_size)
        self.gbf_proj = NonLinearHead(num_kernels, attention_heads)

    def forward(self, src_tokens, src_distance, src_edge_type):
        padding_mask = src_tokens.eq(self.padding_idx)
        if not padding_mask.any():
            padding_mask = None
        x = self.embed_tokens(src_tokens)
        n = src_distance.size(-1)
        bias = self.gbf_proj(self.gbf(src_distance, src_edge_type))
        bias = bias.permute(0, 3, 1, 2).contiguous().view(-1, n, n)
        return self.encoder(x, attn_mask=bias, padding_mask=padding_mask)
