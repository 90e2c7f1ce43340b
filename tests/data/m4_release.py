"""A miniature MolBind-M4 release, written in the release's own formats, for the M4 tests.

    manifest = write_release(root, sizes={"pretrain": 24, "valid": 16, "test": 20})

writes `root/{2D-Text,3D-Text,3D-2D,3D-Protein}/{pretrain,valid,test}/...` exactly as the
original reads it (data_pipeline/sources/m4_layout.py):

* graph files: PyG `Data(x, edge_index, edge_attr)` objects saved with `torch.save` by
  torch_geometric itself (graph_format="pyg"; "dict" saves plain dicts of tensors), with the
  Hu et al. features of molbind_data.featurize.graph (x = [atomic number - 1, chirality],
  edge_attr = [bond type, bond direction], both directions of each bond);
* LMDBs: single-file LMDBs (subdir=False) of pickled dicts under keys "0".."n-1", as Uni-Mol /
  Uni-Core write them: molecules {'atoms': [symbols with H], 'coordinates': [np.ndarray(n, 3)
  float32 per conformer], 'smi': SMILES} (RDKit ETKDG conformers of real molecules), pockets
  {'atoms': PDB atom names, 'coordinates': [np.ndarray(m, 3)], 'residue': per-atom residue
  labels, 'pocket': target name} (residue templates placed around the ligand);
* text files: a description naming the molecule, over several lines.

File numbering makes the original's order rules visible: 2D-Text ids are 0..n-1, so the plain
string sort (graph_10.pt before graph_2.pt) differs from numeric order; 3D-Text and 3D-2D files
are numbered k = 3 i + 1 and 2 i + 5 (written in a shuffled order), and the i-th in int(k)
order is LMDB record str(i). The manifest holds, per pair type and split, the record ids in
the original's order and the molecule of each record, so tests can check order and pairing.

`bad=True` adds to 2D-Text/pretrain a graph file whose pickle calls os.system (touching
`root/PWNED`) and a text without a graph; they are listed under manifest["bad"].
"""
from __future__ import annotations

import os
import random

import numpy as np

SPLIT_NAMES = {"pretrain": "train", "valid": "validation", "test": "test"}
MARKER = "PWNED"

# Real small molecules (name, SMILES).
MOLECULES = [
    ("methanol", "CO"), ("ethanol", "CCO"), ("propan-1-ol", "CCCO"), ("propan-2-ol", "CC(C)O"),
    ("butan-1-ol", "CCCCO"), ("acetone", "CC(C)=O"), ("acetic acid", "CC(=O)O"),
    ("propanoic acid", "CCC(=O)O"), ("acetaldehyde", "CC=O"), ("ethyl acetate", "CCOC(C)=O"),
    ("diethyl ether", "CCOCC"), ("acetonitrile", "CC#N"), ("methylamine", "CN"),
    ("ethylamine", "CCN"), ("dimethylamine", "CNC"), ("trimethylamine", "CN(C)C"),
    ("glycine", "NCC(=O)O"), ("alanine", "C[C@H](N)C(=O)O"), ("serine", "N[C@@H](CO)C(=O)O"),
    ("urea", "NC(N)=O"), ("acetamide", "CC(N)=O"), ("formamide", "NC=O"),
    ("ethylene glycol", "OCCO"), ("glycerol", "OCC(O)CO"), ("lactic acid", "CC(O)C(=O)O"),
    ("benzene", "c1ccccc1"), ("toluene", "Cc1ccccc1"), ("phenol", "Oc1ccccc1"),
    ("aniline", "Nc1ccccc1"), ("benzoic acid", "OC(=O)c1ccccc1"), ("benzaldehyde", "O=Cc1ccccc1"),
    ("anisole", "COc1ccccc1"), ("chlorobenzene", "Clc1ccccc1"), ("fluorobenzene", "Fc1ccccc1"),
    ("bromobenzene", "Brc1ccccc1"), ("pyridine", "c1ccncc1"), ("pyrrole", "c1cc[nH]c1"),
    ("furan", "c1ccoc1"), ("thiophene", "c1ccsc1"), ("imidazole", "c1c[nH]cn1"),
    ("cyclohexane", "C1CCCCC1"), ("cyclopentanone", "O=C1CCCC1"), ("piperidine", "C1CCNCC1"),
    ("morpholine", "C1COCCN1"), ("tetrahydrofuran", "C1CCOC1"), ("dimethyl sulfoxide", "CS(C)=O"),
    ("ethanethiol", "CCS"), ("chloroform", "ClC(Cl)Cl"), ("dichloromethane", "ClCCl"),
    ("nitromethane", "C[N+](=O)[O-]"), ("(E)-but-2-ene", "C/C=C/C"), ("(Z)-but-2-ene", r"C/C=C\C"),
    ("acrylic acid", "C=CC(=O)O"), ("maleic acid", r"OC(=O)/C=C\C(=O)O"), ("salicylic acid", "OC(=O)c1ccccc1O"),
    ("paracetamol", "CC(=O)Nc1ccc(O)cc1"), ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"), ("nicotinamide", "NC(=O)c1cccnc1"),
    ("ibuprofen", "CC(C)Cc1ccc(C(C)C(=O)O)cc1"), ("naphthalene", "c1ccc2ccccc2c1"),
    ("indole", "c1ccc2[nH]ccc2c1"), ("quinoline", "c1ccc2ncccc2c1"), ("cytosine", "Nc1cc[nH]c(=O)n1"),
]

# Residue templates for synthetic pockets (PDB atom names; H atoms are dropped by the reader).
_RESIDUES = [
    ("SER", ["N", "CA", "C", "O", "CB", "OG", "H", "HA"]),
    ("ASP", ["N", "CA", "C", "O", "CB", "CG", "OD1", "OD2", "H"]),
    ("LYS", ["N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ", "HZ1"]),
    ("PHE", ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"]),
    ("CYS", ["N", "CA", "C", "O", "CB", "SG"]),
    ("HIS", ["N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2"]),
]


def molecule(index: int) -> tuple[str, str]:
    return MOLECULES[index % len(MOLECULES)]


def describe(name: str, smiles: str) -> str:
    """A multi-line description (the reader joins stripped non-empty lines)."""
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    mol = Chem.MolFromSmiles(smiles)
    return (f"  The molecule is {name}.\n\n It has the formula {CalcMolFormula(mol)} "
            f"and {mol.GetNumHeavyAtoms()} heavy atoms.\nIts SMILES is {smiles} \n")


_CONFORMER_CACHE: dict[tuple[str, int], dict] = {}


def mol_entry(smiles: str, seed: int = 0, num_conformers: int = 2) -> dict:
    """A Uni-Mol molecule record: all atoms with H, one float32 [n, 3] array per conformer."""
    key = (smiles, seed)
    if key not in _CONFORMER_CACHE:
        from rdkit import Chem
        from rdkit.Chem import AllChem

        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num_conformers, randomSeed=seed + 1))
        if not ids:
            raise RuntimeError(f"RDKit could not embed {smiles}")
        _CONFORMER_CACHE[key] = {
            "atoms": [a.GetSymbol() for a in mol.GetAtoms()],
            "coordinates": [np.asarray(mol.GetConformer(i).GetPositions(), np.float32) for i in ids],
            "smi": smiles,
        }
    entry = _CONFORMER_CACHE[key]
    return {"atoms": list(entry["atoms"]), "coordinates": [c.copy() for c in entry["coordinates"]],
            "smi": entry["smi"]}


def pocket_entry(ligand: dict, target: str, seed: int) -> dict:
    """Residue templates placed on a shell 4-7 A around the ligand's first conformer."""
    rng = np.random.default_rng(seed)
    center = ligand["coordinates"][0].mean(axis=0)
    atoms, coords, residues = [], [], []
    for j in range(4 + seed % 3):
        name, template = _RESIDUES[(seed + j) % len(_RESIDUES)]
        direction = rng.normal(size=3)
        anchor = center + direction / np.linalg.norm(direction) * rng.uniform(4.0, 7.0)
        for atom in template:
            atoms.append(atom)
            coords.append(anchor + rng.normal(scale=1.2, size=3))
            residues.append(f"{name}{10 + j}")
    return {"atoms": atoms, "coordinates": [np.asarray(coords, np.float32)], "residue": residues,
            "pocket": target}


def save_graph(path, smiles: str, graph_format: str = "pyg") -> None:
    import torch

    from molbind_data.featurize.graph import smiles_to_graph

    g = smiles_to_graph(smiles)
    tensors = {"x": torch.from_numpy(g["graph_node_feat"]).long(),
               "edge_index": torch.from_numpy(g["graph_edge_index"]).long(),
               "edge_attr": torch.from_numpy(g["graph_edge_feat"]).long()}
    if graph_format == "pyg":
        from torch_geometric.data import Data

        torch.save(Data(**tensors), path)
    elif graph_format == "dict":
        torch.save(tensors, path)
    else:
        raise ValueError(graph_format)


class RunsCommand:
    """Pickles as a call of os.system: loading it with a plain torch.load runs the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def save_malicious_graph(path, marker) -> None:
    """A genuine PyG Data object carrying an extra attribute whose unpickling runs a command."""
    import torch
    from torch_geometric.data import Data

    torch.save(Data(x=torch.zeros((1, 2), dtype=torch.long), edge_index=torch.zeros((2, 0), dtype=torch.long),
                    payload=RunsCommand(f"touch {marker}")), path)


def write_release(root, sizes=None, *, graph_format: str = "pyg", bad: bool = False, seed: int = 0) -> dict:
    """Write the miniature release under `root`; returns the manifest (see the module doc)."""
    from molbind_data.lmdb_io import write_lmdb

    sizes = sizes or {"pretrain": 24, "valid": 16, "test": 20}
    root = str(root)
    rng = random.Random(seed)
    manifest = {"order": {}, "smiles": {}, "bad": {}}
    offset = 0
    for folder_split, n in sizes.items():
        split = SPLIT_NAMES[folder_split]

        # 2D-Text: ids 0..n-1; the original's order is the string sort of graph_<id>.pt
        d = os.path.join(root, "2D-Text", folder_split)
        for sub in ("graph", "text", "smiles"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        ids = [str(i) for i in range(n)]
        for i in ids:
            name, smi = molecule(offset + int(i))
            save_graph(os.path.join(d, "graph", f"graph_{i}.pt"), smi, graph_format)
            _write(os.path.join(d, "text", f"text_{i}.txt"), describe(name, smi))
            _write(os.path.join(d, "smiles", f"smiles_{i}.txt"), smi + "\n")
            manifest["smiles"][f"m4/graph_text/{split}/{i}"] = smi
        order = sorted(ids, key=lambda i: f"graph_{i}.pt")
        manifest["order"].setdefault("graph_text", {})[split] = [f"m4/graph_text/{split}/{i}" for i in order]
        if bad and folder_split == "pretrain":
            _, smi = molecule(offset + n)
            save_malicious_graph(os.path.join(d, "graph", f"graph_{n}.pt"), os.path.join(root, MARKER))
            _write(os.path.join(d, "text", f"text_{n}.txt"), describe("a trap", smi))
            _write(os.path.join(d, "smiles", f"smiles_{n}.txt"), smi + "\n")
            _write(os.path.join(d, "text", f"text_{n + 1}.txt"), describe("an orphan", smi))
            manifest["bad"][f"m4/graph_text/{split}/{n}"] = "unreadable_file"
            manifest["bad"][f"m4/graph_text/{split}/{n + 1}"] = "missing_partner"
            both = ids + [str(n), str(n + 1)]
            manifest["order"]["graph_text"][split + "_raw"] = [
                f"m4/graph_text/{split}/{i}" for i in sorted(both, key=lambda i: f"graph_{i}.pt")]

        # 3D-Text and 3D-2D: files numbered k, the i-th in int(k) order is LMDB record str(i)
        for pair, folder, kind, number in (("conformer_text", "3D-Text", "text", lambda i: 3 * i + 1),
                                           ("graph_conformer", "3D-2D", "graph", lambda i: 2 * i + 5)):
            d = os.path.join(root, folder, folder_split)
            os.makedirs(os.path.join(d, kind), exist_ok=True)
            entries = []
            positions = list(range(n))
            rng.shuffle(positions)  # file creation order must not matter
            for i in positions:
                name, smi = molecule(offset + 7 + i if kind == "text" else offset + 13 + i)
                k = number(i)
                if kind == "text":
                    _write(os.path.join(d, "text", f"text_{k}.txt"), describe(name, smi))
                else:
                    save_graph(os.path.join(d, "graph", f"graph_{k}.pt"), smi, graph_format)
                manifest["smiles"][f"m4/{pair}/{split}/{k}"] = smi
            for i in range(n):
                _, smi = molecule(offset + 7 + i if kind == "text" else offset + 13 + i)
                entries.append(mol_entry(smi, seed=i))
            write_lmdb(os.path.join(d, "unimol_mol.lmdb"), entries)
            manifest["order"].setdefault(pair, {})[split] = [f"m4/{pair}/{split}/{number(i)}" for i in range(n)]

        # 3D-Protein: ligand i with pocket i; a few targets
        d = os.path.join(root, "3D-Protein", folder_split)
        os.makedirs(d, exist_ok=True)
        ligands, pockets = [], []
        for i in range(n):
            _, smi = molecule(offset + 21 + i)
            ligand = mol_entry(smi, seed=100 + i)
            ligands.append(ligand)
            pockets.append(pocket_entry(ligand, f"target{i % 4}", seed=i))
            manifest["smiles"][f"m4/conformer_pocket/{split}/{i}"] = smi
        write_lmdb(os.path.join(d, "ligand.lmdb"), ligands)
        write_lmdb(os.path.join(d, "pocket.lmdb"), pockets)
        manifest["order"].setdefault("conformer_pocket", {})[split] = [f"m4/conformer_pocket/{split}/{i}" for i in range(n)]
        offset += n
    return manifest


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
