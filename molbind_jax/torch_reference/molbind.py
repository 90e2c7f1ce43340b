"""PyTorch reference of the original's whole `Model` (`model/contrastive.py`; spec sections 0, 1c, 2).

Used by the whole-model comparison harness (`convert/compare_molbind.py`), the export back to
PyTorch (`convert/to_torch.py`) and the tests; never by training. Its submodules carry the
original's names, in the original's construction order, so `MolBindModel().state_dict()` has
exactly the keys of the original `Model` (a Lightning `.ckpt` prefixes them with `model.`):

    graph_encoder  GIN (torch_reference.gin.GNN)          ln_graph  LayerNorm(gin width)
    conf_encoder   Uni-Mol, molecule dictionary           ln_conf   LayerNorm(unimol width)
    pro_encoder    Uni-Mol, pocket dictionary             ln_pro    LayerNorm(unimol width)
    Qformer        torch_reference.qformer.QFormer (only `.bert` is run)
    text_proj, graph_proj, conf_proj, pro_proj            Linear(., embed_dim)

The three LayerNorms are the original's float32 subclass (`bind.py` 126-132: computed in
float32, eps 1e-5, cast back).

Embeddings, as the original computes them (`contrastive.py` 139-177):
    graph:      graph_proj(ln_graph(global_mean_pool(GIN)))
    text:       text_proj(Qformer.bert(ids, mask).last_hidden_state[:, 0])     (no LayerNorm)
    conformer:  conf_proj(ln_conf(mean over ALL N positions of the Uni-Mol output))
    pocket:     pro_proj(ln_pro(mean over ALL N positions))
The Uni-Mol mean includes [CLS], [SEP] and the collater's padding (to a multiple of 8), so a
row depends on its batch's padded length. Training L2-normalises every embedding
(`normalize=True`, F.normalize eps 1e-12); the original's retrieval evaluation does not
(`normalize=False`).

Sizes are keyword dicts per tower; the defaults are the original's (GIN 5 x 300, Uni-Mol
15 x 512 with 64 heads and 128 kernels, mol V=31 / pocket V=10, SciBERT + [DEC] Q-Former,
embed_dim 512).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from molbind_jax.torch_reference.gin import GNN
from molbind_jax.torch_reference.qformer import QFormer
from molbind_jax.torch_reference.unimol import UniMolEncoder

GIN_DEFAULTS = dict(num_layer=5, emb_dim=300, num_atom_type=120, num_chirality=3, num_bond_type=6,
                    num_bond_dir=3, self_loop_attr=(0, 0))
UNIMOL_DEFAULTS = dict(encoder_layers=15, embed_dim=512, ffn_embed_dim=2048, attention_heads=64, num_kernels=128)
MOL_VOCAB, POCKET_VOCAB = 31, 10


class LayerNorm32(nn.LayerNorm):
    """The original's LayerNorm subclass: float32 compute, result cast back to the input dtype."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class MolBindModel(nn.Module):
    """The original `Model`'s parameters and embedding paths (no loss, no gather)."""

    def __init__(self, *, gin: Mapping[str, Any] | None = None, conformer: Mapping[str, Any] | None = None,
                 pocket: Mapping[str, Any] | None = None, text: Mapping[str, Any] | None = None,
                 embed_dim: int = 512):
        super().__init__()
        gin = {**GIN_DEFAULTS, **(gin or {})}
        conformer = {**UNIMOL_DEFAULTS, "vocab_size": MOL_VOCAB, **(conformer or {})}
        pocket = {**UNIMOL_DEFAULTS, "vocab_size": POCKET_VOCAB, **(pocket or {})}
        # The cross-attention reads GIN node features: encoder_width = GIN width (bind.py 21-55).
        text = {"encoder_width": gin["emb_dim"], **(text or {})}
        # Construction order of contrastive.py 66-91 (state_dict order follows it).
        self.graph_encoder = GNN(**gin)
        self.ln_graph = LayerNorm32(gin["emb_dim"])
        self.conf_encoder = UniMolEncoder(**conformer)
        self.ln_conf = LayerNorm32(conformer["embed_dim"])
        self.pro_encoder = UniMolEncoder(**pocket)
        self.ln_pro = LayerNorm32(pocket["embed_dim"])
        self.Qformer = QFormer(**text)
        self.text_proj = nn.Linear(self.Qformer.bert.embeddings.word_embeddings.embedding_dim, embed_dim)
        self.graph_proj = nn.Linear(gin["emb_dim"], embed_dim)
        self.conf_proj = nn.Linear(conformer["embed_dim"], embed_dim)
        self.pro_proj = nn.Linear(pocket["embed_dim"], embed_dim)

    @staticmethod
    def _finish(x, normalize: bool):
        return F.normalize(x, p=2, dim=-1, eps=1e-12) if normalize else x

    def embed_graph(self, x, edge_index, edge_attr, batch, num_graphs: int | None = None, *,
                    normalize: bool = True):
        """PyG-style batch (x [n,2], edge_index [2,e], edge_attr [e,2], batch [n]) -> [G, E]."""
        _, graph_rep = self.graph_encoder(x, edge_index, edge_attr, batch, num_graphs)
        return self._finish(self.graph_proj(self.ln_graph(graph_rep)), normalize)

    def embed_text(self, input_ids, attention_mask, *, normalize: bool = True):
        """ids, mask [B,L] -> [B, E] from position 0 of `last_hidden_state`."""
        hidden = self.Qformer.bert(input_ids, attention_mask)
        return self._finish(self.text_proj(hidden[:, 0, :]), normalize)

    def embed_conformer(self, tokens, distance, edge_type, *, normalize: bool = True):
        """The collater's (tokens [B,N], dist [B,N,N], edge_type [B,N,N]) -> [B, E]."""
        rep = self.conf_encoder(tokens, distance, edge_type)
        return self._finish(self.conf_proj(self.ln_conf(torch.mean(rep, dim=1))), normalize)

    def embed_pocket(self, tokens, distance, edge_type, *, normalize: bool = True):
        rep = self.pro_encoder(tokens, distance, edge_type)
        return self._finish(self.pro_proj(self.ln_pro(torch.mean(rep, dim=1))), normalize)


def saved_state_dict(model: nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """What the original's `on_save_checkpoint` keeps (`run.py` 236-246): every state-dict
    entry that `get_parameter` resolves (and that requires grad), i.e. no buffers (GIN
    BatchNorm statistics, `num_batches_tracked`, `position_ids`); tied parameters under both
    names."""
    out = {}
    for key, value in model.state_dict().items():
        try:
            keep = model.get_parameter(key).requires_grad
        except AttributeError:
            keep = False
        if keep:
            out[prefix + key] = value
    return out


def randomize_(model: MolBindModel, seed: int = 0) -> MolBindModel:
    """Non-trivial random values for every parameter and BatchNorm statistic (tests, demos):
    a conversion that drops or swaps any of them then changes the embeddings. Weights are
    N(0, 1/sqrt(fan_in)); biases N(0, 0.1); LayerNorm / BatchNorm scales U(0.5, 1.5);
    running means U(-0.5, 0.5), variances U(0.5, 2); Uni-Mol kernel means U(0, 3), stds
    U(0.5, 3), edge-type mul N(1, 0.1) and bias N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
                if isinstance(m, nn.BatchNorm1d):
                    uniform(m.running_mean, -0.5, 0.5)
                    uniform(m.running_var, 0.5, 2.0)
            elif isinstance(m, nn.Linear):
                normal(m.weight, m.weight.shape[1] ** -0.5)
                if m.bias is not None and m.bias is not getattr(model.Qformer.cls.predictions, "bias", None):
                    normal(m.bias, 0.1)
            elif isinstance(m, nn.Embedding):
                normal(m.weight, 1.0 if m.weight.shape[0] > 1 else 0.0)
        model.Qformer.cls.predictions.bias.copy_(torch.randn(model.Qformer.cls.predictions.bias.shape, generator=g))
        for enc in (model.conf_encoder, model.pro_encoder):
            uniform(enc.gbf.means.weight, 0.0, 3.0)
            uniform(enc.gbf.stds.weight, 0.5, 3.0)
            normal(enc.gbf.mul.weight, 0.1, 1.0)
            normal(enc.gbf.bias.weight, 0.1)
            enc.embed_tokens.weight[enc.padding_idx].zero_()
        model.Qformer.copy_query_parts_()
    return model
