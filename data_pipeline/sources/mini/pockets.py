"""conformer_pocket: the 8 perses JACS targets (openmmforcefields) and posebusters' 4 complexes."""
from __future__ import annotations

import functools
import glob
import os

import numpy as np

from molbind_data import featurize as fz

from .common import _hash_order, _rdkit, package_dir, split_of_smiles, take_per_split

# pocket_split="target": whole targets are held out of training (target -> split).
TARGET_SPLITS = {
    "bace": "train", "jnk1": "train", "mcl1": "train", "p38a": "train", "thrombin": "train",
    "tyk2": "train", "cdk2": "validation", "ptp1b": "test",
    "posebusters": "test",  # 1ia1, 1of6, 1s3v, 1uou crystal complexes
}


def pocket_systems() -> list[tuple[str, str, str]]:
    """(target, protein pdb, ligand sdf) for every complex set."""
    out = []
    root = os.path.join(package_dir("openmmforcefields"), "data", "perses_jacs_systems")
    for target in sorted(t for t in TARGET_SPLITS if t != "posebusters"):
        proteins = glob.glob(os.path.join(root, target, "*_protein.pdb"))
        ligands = [p for p in glob.glob(os.path.join(root, target, "*_ligands*.sdf"))]
        if proteins and ligands:
            out.append((target, proteins[0], sorted(ligands)[0]))
    for pdb in sorted(glob.glob(os.path.join(package_dir("posebusters"), "datasets", "pdb", "*"))):
        code = os.path.basename(pdb)
        out.append(("posebusters", os.path.join(pdb, f"{code}_protein_one_lig_removed.pdb"),
                    os.path.join(pdb, f"{code}_ligand.sdf")))
    return out


def pocket_split_of(raw: dict, mode: str) -> str:
    """Split of one conformer_pocket record (see DEFAULT_OPTIONS["pocket_split"])."""
    if mode == "target":
        return TARGET_SPLITS[raw["split_group"]]
    if mode != "scaffold":
        raise ValueError(f"pocket_split must be 'scaffold' or 'target', got {mode!r}")
    if raw["split_group"] == "posebusters":
        return "test"  # 4 proteins seen nowhere else: held out whole
    # A ligand RDKit cannot read goes to train; the featurizer then counts it as a skip.
    return split_of_smiles(raw["ligand_smiles"]) if raw.get("ligand_smiles") else "train"


@functools.lru_cache(maxsize=16)
def _conformer_pocket_candidates(cap, seed, mode="scaffold") -> tuple:
    Chem = _rdkit()
    out = []
    for target, protein, sdf in pocket_systems():
        supplier = Chem.SDMolSupplier(sdf, removeHs=False, sanitize=False)
        for i, mol in enumerate(supplier):
            block = Chem.MolToMolBlock(mol) if mol is not None else None
            name = mol.GetProp("_Name") if mol is not None and mol.HasProp("_Name") else str(i)
            code = os.path.basename(os.path.dirname(protein)) if target == "posebusters" else target
            smiles = None
            if mol is not None:
                try:
                    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
                except Exception:  # noqa: BLE001 (any RDKit failure: split as unreadable)
                    smiles = None
            out.append((f"{code}/{i}:{name}", {"target": code if target != "posebusters" else f"posebusters:{code}",
                                               "split_group": target, "protein_path": protein,
                                               "molblock": block, "ligand_smiles": smiles}))
    return take_per_split(_hash_order(out, seed) if cap is not None else out, cap,
                          lambda k, r: pocket_split_of(r, mode))


def _pocket_example(raw: dict, options: dict, seed: int) -> dict:
    from molbind_data.featurize import pocket

    from .examples import _conformer_fields  # examples imports this module

    Chem = _rdkit()
    if raw.get("molblock") is None:
        raise fz.SkipRecord(fz.UNREADABLE_FILE, "ligand")
    mol = Chem.MolFromMolBlock(raw["molblock"], removeHs=False, sanitize=False)
    if mol is None or mol.GetNumAtoms() == 0 or mol.GetNumConformers() == 0:
        raise fz.SkipRecord(fz.UNREADABLE_FILE, "ligand")
    try:
        probe = Chem.Mol(mol)
        Chem.SanitizeMol(probe)
        smiles = Chem.MolToSmiles(Chem.RemoveHs(probe))
    except Exception:
        smiles = ""  # posed ligands with odd valences still give a usable conformer
    atoms = [a.GetSymbol() for a in mol.GetAtoms()]
    coords = mol.GetConformer().GetPositions().astype(np.float32)[None]
    ligand = _conformer_fields({"atoms": atoms, "coords": coords}, options, seed)
    site = pocket.extract_pocket(raw["protein_path"], mol, cutoff=float(options["pocket_cutoff"]),
                                 max_atoms=256, seed=seed)
    return {"smiles": smiles, "target": raw["target"], **ligand,
            "pocket_tokens": np.asarray(site["pocket_tokens"], np.int32),
            "pocket_coords": np.asarray(site["pocket_coords"], np.float32)}

