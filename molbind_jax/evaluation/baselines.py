"""Non-learned retrieval baselines, one or two per pair type, scored like the model.

Each baseline turns the two sides of a test split into a similarity matrix [N, N]
(row i = side A of pair i, column j = side B of pair j) so that the same rank / recall code
as for the learned embeddings applies (metrics.retrieval_ranks, same tie rule). A baseline
uses only what its side of the pair actually carries (each modality says what that is,
`ModalitySpec.baseline_features`), unless its name says otherwise. For the original pairs:

* text pairs (graph_text, conformer_text): ``smiles_text_tfidf`` — cosine of character
  3-gram TF-IDF vectors between the molecule's SMILES and the text (IDF fitted on the
  union of both sides of the split, no labels used). It catches texts that spell out
  element names or SMILES-like fragments; an honest "string overlap" floor.
* graph_conformer: ``composition`` — cosine of heavy-atom element counts, from the graph's
  atomic numbers on one side and the conformer's Uni-Mol tokens on the other (each side
  uses only its own input). ``morgan_tanimoto`` — Tanimoto of Morgan fingerprints (radius
  2, 2048 bits) of the SMILES of *both* sides: the two sides are the same molecule, so this
  is an identity match and an upper bound by construction, not a fair competitor; it shows
  how much of the task is "which molecule is this".
* conformer_pocket: ``size`` — pockets are cut around their ligand, so pocket size tracks
  ligand size: score = -|z(log n_pocket_atoms) - z(log n_ligand_atoms)|, z standardised
  within the split (no pairing information used). ``composition`` — cosine of element
  counts of ligand vs pocket atoms.

Invalid inputs (unparsable SMILES) give NaN rows/columns: they rank last (metrics tie rule).
"""
from __future__ import annotations

import collections
import math
from typing import Mapping, Sequence

import numpy as np

from molbind_data.featurize.dictionaries import MOL_SYMBOLS

# Elements tracked for composition vectors: the Uni-Mol molecule dictionary's elements, plus
# one "other" bin. Hydrogens are excluded (heavy-atom graphs; Uni-Mol drops H).
ELEMENTS = tuple(s for s in MOL_SYMBOLS if not s.startswith("[") and s != "H")
_ELEMENT_INDEX = {s: i for i, s in enumerate(ELEMENTS)}
_OTHER = len(ELEMENTS)

MAX_DENSE = 50_000  # baselines build dense [N, N] matrices; refuse absurd sizes clearly


def _check_size(n_a: int, n_b: int):
    if n_a * n_b > MAX_DENSE * MAX_DENSE // 10:
        raise ValueError(f"baseline matrix {n_a} x {n_b} is too large; subsample the split")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a @ b.T).astype(np.float32)


# ----------------------------------------------------------------------------- strings


def _ngrams(text: str, n: int) -> list[str]:
    t = f" {text.lower()} "
    return [t[i:i + n] for i in range(max(len(t) - n + 1, 0))]


def char_ngram_tfidf(texts_a: Sequence[str], texts_b: Sequence[str], n: int = 3
                     ) -> np.ndarray:
    """Cosine similarity [A, B] of character n-gram TF-IDF vectors (sublinear tf, smooth
    idf fitted on the union of both sides). Empty strings give zero rows (score 0)."""
    import scipy.sparse as sp
    _check_size(len(texts_a), len(texts_b))
    docs = [collections.Counter(_ngrams(t or "", n)) for t in list(texts_a) + list(texts_b)]
    vocab: dict[str, int] = {}
    df = collections.Counter()
    for d in docs:
        for g in d:
            vocab.setdefault(g, len(vocab))
        df.update(d.keys())
    n_docs = len(docs)
    idf = np.zeros(len(vocab), np.float64)
    for g, j in vocab.items():
        idf[j] = math.log((1 + n_docs) / (1 + df[g])) + 1.0
    rows, cols, vals = [], [], []
    for i, d in enumerate(docs):
        for g, c in d.items():
            rows.append(i)
            cols.append(vocab[g])
            vals.append((1.0 + math.log(c)) * idf[vocab[g]])
    m = sp.csr_matrix((vals, (rows, cols)), shape=(n_docs, max(len(vocab), 1)))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
    m = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m
    a, b = m[:len(texts_a)], m[len(texts_a):]
    return np.asarray((a @ b.T).todense(), np.float32)


# ----------------------------------------------------------------------------- fingerprints


def morgan_fingerprints(smiles: Sequence[str], radius: int = 2, n_bits: int = 2048):
    """RDKit bit vectors, None where the SMILES does not parse."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator
    RDLogger.DisableLog("rdApp.*")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = []
    for s in smiles:
        mol = Chem.MolFromSmiles(s) if s else None
        out.append(gen.GetFingerprint(mol) if mol is not None else None)
    return out


def tanimoto_matrix(fps_a, fps_b) -> np.ndarray:
    """Tanimoto [A, B]; NaN for rows/columns whose fingerprint is None."""
    from rdkit import DataStructs
    _check_size(len(fps_a), len(fps_b))
    out = np.full((len(fps_a), len(fps_b)), np.nan, np.float32)
    valid_b = [j for j, f in enumerate(fps_b) if f is not None]
    vb = [fps_b[j] for j in valid_b]
    for i, f in enumerate(fps_a):
        if f is not None and vb:
            out[i, valid_b] = DataStructs.BulkTanimotoSimilarity(f, vb)
    return out


# ----------------------------------------------------------------------------- composition


def composition_from_symbols(symbols: Sequence[str]) -> np.ndarray:
    """Element-count vector [len(ELEMENTS)+1] from atom symbols (H and specials ignored)."""
    v = np.zeros(len(ELEMENTS) + 1, np.float32)
    for s in symbols:
        if s == "H" or s.startswith("["):
            continue
        v[_ELEMENT_INDEX.get(s, _OTHER)] += 1
    return v


def composition_from_tokens(tokens, symbols: Sequence[str] = MOL_SYMBOLS) -> np.ndarray:
    """Counts from Uni-Mol token ids (0 = pad, specials dropped); [UNK] counts as other."""
    syms = [symbols[int(t)] for t in np.asarray(tokens).ravel()]
    v = composition_from_symbols([s for s in syms if s != "[UNK]"])
    v[_OTHER] += sum(s == "[UNK]" for s in syms)
    return v


def composition_from_graph(node_feat) -> np.ndarray:
    """Counts from Hu et al. node features (column 0 = atomic_num - 1)."""
    from rdkit import Chem
    table = Chem.GetPeriodicTable()
    z = np.asarray(node_feat).reshape(-1, 2)[:, 0] + 1
    return composition_from_symbols([table.GetElementSymbol(int(a)) for a in z])


def heavy_atom_count(tokens) -> int:
    """Real atoms in a Uni-Mol token row (no pad/CLS/SEP; H excluded already upstream)."""
    t = np.asarray(tokens).ravel()
    return int(np.sum(t > 2))


def size_similarity(n_a: Sequence[int], n_b: Sequence[int]) -> np.ndarray:
    """-|z(log n_a) - z(log n_b)|, each side standardised over the split."""
    def z(n):
        x = np.log(np.maximum(np.asarray(n, np.float64), 1.0))
        return (x - x.mean()) / max(x.std(), 1e-6)
    _check_size(len(n_a), len(n_b))
    return (-np.abs(z(n_a)[:, None] - z(n_b)[None, :])).astype(np.float32)


# ----------------------------------------------------------------------------- per pair


def pair_baselines(pair: str, records: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """{baseline name: sim [N, N]} for the test records of one pair type: row = the pair's x
    side, column = its y side (data_pipeline/schema.py). Which baselines apply follows from
    what each side carries (`ModalitySpec.baseline_features`): a SMILES against a text gets
    `smiles_text_tfidf`, two atom counts `size`, two element compositions `composition`,
    two SMILES (the same molecule on both sides) the `morgan_tanimoto` upper bound."""
    from molbind_jax.modalities import pair_specs

    if not records:
        return {}
    xs, ys = pair_specs(pair)
    fx = [xs.baseline_features(r) for r in records]
    fy = [ys.baseline_features(r) for r in records]
    has = lambda k: k in fx[0] and k in fy[0]  # noqa: E731
    out: dict[str, np.ndarray] = {}
    if "smiles" in fx[0] and "text" in fy[0]:
        out["smiles_text_tfidf"] = char_ngram_tfidf([f["smiles"] for f in fx], [f["text"] for f in fy])
    if has("heavy_atoms"):
        out["size"] = size_similarity([f["heavy_atoms"] for f in fx], [f["heavy_atoms"] for f in fy])
    if has("composition"):
        out["composition"] = _cosine(np.stack([f["composition"] for f in fx]), np.stack([f["composition"] for f in fy]))
    if has("smiles"):
        fps = morgan_fingerprints([f["smiles"] for f in fx])
        out["morgan_tanimoto (same SMILES both sides: upper bound)"] = tanimoto_matrix(
            fps, morgan_fingerprints([f["smiles"] for f in fy]))
    return out


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)
