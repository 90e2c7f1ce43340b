"""conformer_text: PDB Chemical Component Dictionary ideal coordinates (biotite 1.6.0) + ChEBI."""
from __future__ import annotations

import functools
import re

import numpy as np

from .chebi import chebi_inchikey, chebi_molecules, chebi_text
from .common import (_CODE_LIKE, _MOL_ELEMENTS, _hash_order, _rdkit, split_of_smiles, stable_hash,
                     take_per_split)
from .pubchem import pubchem_synonyms


@functools.lru_cache(maxsize=1)
def ccd_index() -> tuple:
    """Eligible CCD components: released, non-polymer, ideal coordinates, 6-60 heavy atoms."""
    from biotite.structure.info import get_ccd

    cc = get_ccd()["chem_comp"]
    cols = {k: cc[k].as_array() for k in ("id", "name", "pdbx_synonyms", "type", "formula",
                                          "pdbx_release_status", "pdbx_ideal_coordinates_missing_flag")}
    out = []
    for i in range(len(cols["id"])):
        if cols["type"][i].upper() != "NON-POLYMER" or cols["pdbx_release_status"][i] != "REL":
            continue
        if cols["pdbx_ideal_coordinates_missing_flag"][i] == "Y" or cols["name"][i] in ("?", ""):
            continue
        counts = {m.group(1): int(m.group(2) or 1) for m in re.finditer(r"([A-Z][a-z]?)(\d*)", cols["formula"][i])}
        if not set(counts) <= _MOL_ELEMENTS or not 6 <= sum(v for k, v in counts.items() if k != "H") <= 60:
            continue
        synonyms = [s.strip() for s in re.split(r";|\n", cols["pdbx_synonyms"][i])
                    if s.strip() not in ("?", "") and not _CODE_LIKE.match(s.strip().upper())]
        out.append((str(cols["id"][i]), " ".join(str(cols["name"][i]).split()), synonyms))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _ccd_tables() -> tuple[dict, dict, dict, dict]:
    """The CCD's atom and bond columns once, with each component's row range.

    biotite's `residue(id)` filters the whole 2.3M-row atom table per call (~0.1 s); slicing
    the (comp_id-sorted) columns once makes a component ~1 ms.
    """
    from biotite.structure.info import get_ccd

    ccd = get_ccd()
    atom, bond = ccd["chem_comp_atom"], ccd["chem_comp_bond"]
    atoms = {k: atom[k].as_array(str) for k in ("comp_id", "atom_id", "type_symbol")}
    atoms["charge"] = atom["charge"].as_array(int, 0)
    coords = []
    for d in "xyz":
        column = atom[f"pdbx_model_Cartn_{d}_ideal"]
        values = column.as_array(float, np.nan)
        if column.mask is not None:  # "?" / "." entries: no ideal coordinate
            values[column.mask.array != 0] = np.nan
        coords.append(values)
    atoms["coords"] = np.stack(coords, -1)
    bonds = {k: bond[k].as_array(str) for k in ("comp_id", "atom_id_1", "atom_id_2", "value_order")}
    return atoms, _row_ranges(atoms["comp_id"]), bonds, _row_ranges(bonds["comp_id"])


def _row_ranges(ids: np.ndarray) -> dict[str, tuple[int, int]]:
    """comp_id -> (start, stop) of its rows; a table whose ids are not grouped is refused."""
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    stops = np.r_[starts[1:], len(ids)]
    out = {str(ids[a]): (int(a), int(b)) for a, b in zip(starts, stops)}
    if len(out) != len(starts):
        raise ValueError("CCD rows are not grouped by component")
    return out


_BOND_ORDER = {"SING": 1, "DOUB": 2, "TRIP": 3}


def ccd_mol(comp_id: str):
    """RDKit molecule (explicit hydrogens, ideal coordinates) of a CCD component, or None."""
    Chem = _rdkit()
    atoms, atom_rows, bonds, bond_rows = _ccd_tables()
    if comp_id not in atom_rows:
        return None
    a, b = atom_rows[comp_id]
    elements = [e.capitalize() for e in atoms["type_symbol"][a:b]]
    coords, charges = atoms["coords"][a:b], atoms["charge"][a:b].tolist()
    if not np.isfinite(coords).all():  # a "?" coordinate: no ideal geometry
        return None
    has_h = "H" in elements
    mol = Chem.RWMol()
    for element, charge in zip(elements, charges):
        atom = Chem.Atom(element)
        atom.SetFormalCharge(charge)
        atom.SetNoImplicit(has_h)  # as biotite's to_mol: hydrogens are explicit when any is given
        mol.AddAtom(atom)
    index = {name: i for i, name in enumerate(atoms["atom_id"][a:b])}
    start, stop = bond_rows.get(comp_id, (0, 0))
    for n1, n2, order in zip(bonds["atom_id_1"][start:stop], bonds["atom_id_2"][start:stop],
                             bonds["value_order"][start:stop]):
        if n1 not in index or n2 not in index or order not in _BOND_ORDER:
            return None
        mol.AddBond(index[n1], index[n2], Chem.BondType.values[_BOND_ORDER[order]])
    conf = Chem.Conformer(len(elements))
    for i, xyz in enumerate(coords):
        conf.SetAtomPosition(i, xyz.tolist())
    mol.AddConformer(conf, assignId=True)
    return mol.GetMol()


def ccd_structure(comp_id: str):
    """(canonical SMILES, InChIKey, elements, ideal coords [n,3]) of a CCD component, or None.

    The SMILES comes from the component's bond graph (Kekulé bond orders, charges); stereo is
    not perceived from the coordinates.
    """
    Chem = _rdkit()
    mol = ccd_mol(comp_id)
    if mol is None:
        return None
    try:
        Chem.SanitizeMol(mol)
        heavy = Chem.RemoveHs(mol)
        smiles = Chem.MolToSmiles(heavy)
    except Exception:  # noqa: BLE001 (RDKit rejects valences, aromaticity: not a usable component)
        return None
    if not smiles or "." in smiles:
        return None
    key = Chem.MolToInchiKey(heavy) or None
    elements = [a.GetSymbol() for a in mol.GetAtoms()]
    return smiles, key, elements, mol.GetConformer().GetPositions().astype(np.float32)


@functools.lru_cache(maxsize=16)
def _conformer_text_candidates(cap, seed, chebi_fraction, max_heavy) -> tuple:
    n_chebi = None if cap is None else int(round(cap * chebi_fraction))
    n_ccd = None if cap is None else cap - n_chebi
    chebi = chebi_molecules()
    by_key = {}
    for smiles, entry in chebi.items():
        by_key.setdefault(chebi_inchikey(smiles), (smiles, entry))
    seen = set()

    def ccd_stream():
        # Components with readable synonyms first: their text says more than a systematic name.
        from tqdm.auto import tqdm

        order = sorted(ccd_index(), key=lambda c: (not c[2], stable_hash(f"{seed}:{c[0]}")))
        # No total: the split quotas decide how many conversions are needed.
        progress = tqdm(desc="CCD components converted (ideal 3D -> SMILES)", unit="comp", mininterval=5.0)
        for comp_id, name, synonyms in order:
            structure = ccd_structure(comp_id)
            if structure is None or structure[0] in seen:
                continue
            smiles, key, elements, coords = structure
            seen.add(smiles)
            if key in by_key:
                text = chebi_text(name.lower() if name.isupper() else name, by_key[key][1]["classes"], key)
            else:
                extra = [s for s in pubchem_synonyms().get(key, []) if s.lower() != name.lower()][:5]
                names = list(dict.fromkeys(synonyms + extra))[:6]
                text = f"{name}." + (f" Synonyms: {'; '.join(names)}." if names else "")
            progress.update(1)
            yield smiles, {"smiles": smiles, "text": text, "atoms": elements, "coords": coords[None],
                           "source": f"ccd:{comp_id}"}
        progress.close()

    def chebi_stream():
        # RDKit embedding of very large molecules (polysaccharides, lipids) is slow and fragile.
        Chem = _rdkit()
        for smiles, entry in _hash_order(chebi.items(), seed, "conformer"):
            if smiles in seen or Chem.MolFromSmiles(smiles).GetNumHeavyAtoms() > max_heavy:
                continue
            text = chebi_text(entry["name"], entry["classes"], chebi_inchikey(smiles))
            yield smiles, {"smiles": smiles, "text": text, "source": "chebi"}

    split = lambda k, r: split_of_smiles(r["smiles"])  # noqa: E731
    ccd = take_per_split(ccd_stream(), n_ccd, split)
    return ccd + take_per_split(chebi_stream(), n_chebi, split)

