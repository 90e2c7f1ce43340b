"""Sanity of the non-learned baselines: each finds what it is designed to find."""
import numpy as np
import pytest
from rdkit import Chem

from molbind_data.featurize.dictionaries import MOL_DICTIONARY, POCKET_DICTIONARY
from molbind_jax.evaluation import baselines, metrics

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "ClCCl", "CCN(CC)CC", "OC(=O)CS"]


def _graph_nodes(smi):
    mol = Chem.MolFromSmiles(smi)
    return np.array([[a.GetAtomicNum() - 1, 0] for a in mol.GetAtoms()], np.int32)


def _mol_tokens(smi):
    mol = Chem.MolFromSmiles(smi)
    ids = [MOL_DICTIONARY.index(a.GetSymbol()) for a in mol.GetAtoms()]
    return np.array([1] + ids + [2, 0, 0], np.int32)  # CLS ... SEP + padding


def test_tfidf_prefers_identical_and_handles_empty():
    a = ["benzene ring", "ethanol", ""]
    b = ["ethanol", "benzene ring", "acid"]
    sim = baselines.char_ngram_tfidf(a, b)
    assert sim.shape == (3, 3)
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5) and sim[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(sim[2] == 0)


def test_tanimoto_identity_and_invalid_smiles_is_nan():
    fps = baselines.morgan_fingerprints(SMILES + ["not_a_smiles"])
    assert fps[-1] is None
    sim = baselines.tanimoto_matrix(fps, fps)
    np.testing.assert_allclose(np.diag(sim)[:-1], 1.0)
    assert np.all(np.isnan(sim[-1])) and np.all(np.isnan(sim[:, -1]))
    # identity match: perfect retrieval except the NaN row, which ranks last
    ranks = metrics.retrieval_ranks(sim, np.arange(len(fps)))
    assert ranks[:-1].tolist() == [0] * len(SMILES) and ranks[-1] == len(SMILES)


def test_composition_graph_equals_conformer_side():
    for smi in SMILES:
        np.testing.assert_array_equal(baselines.composition_from_graph(_graph_nodes(smi)),
                                      baselines.composition_from_tokens(_mol_tokens(smi)))
    v = baselines.composition_from_tokens(_mol_tokens("ClCCl"))
    assert v[baselines.ELEMENTS.index("Cl")] == 2 and v[baselines.ELEMENTS.index("C")] == 1


def test_pair_baselines_shapes_and_signal():
    recs = [{"smiles": s, "graph_node_feat": _graph_nodes(s), "conformer_tokens": _mol_tokens(s)}
            for s in SMILES]
    out = baselines.pair_baselines("graph_conformer", recs)
    comp = out["composition"]
    assert comp.shape == (6, 6)
    ranks = metrics.retrieval_ranks(comp, np.arange(6))
    assert np.mean(ranks == 0) >= 0.5  # distinct formulas here, so composition mostly matches
    # pockets: size baseline ranks the same-size pocket first
    pocket = lambda n: np.array([1] + [POCKET_DICTIONARY.index("C")] * n + [2], np.int32)
    lig = lambda n: np.array([1] + [MOL_DICTIONARY.index("C")] * n + [2], np.int32)
    recs = [{"smiles": "", "conformer_tokens": lig(n), "pocket_tokens": pocket(10 * n)}
            for n in (5, 10, 20, 40)]
    size = baselines.pair_baselines("conformer_pocket", recs)["size"]
    assert metrics.retrieval_ranks(size, np.arange(4)).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="unknown pair"):
        baselines.pair_baselines("nope", recs)
