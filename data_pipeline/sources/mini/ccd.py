"""conformer_text: PDB Chemical Component Dictionary ideal coordinates (biotite 1.6.0) + ChEBI."""
from __future__ import annotations

import functools
import re

import numpy as np

from .chebi import chebi_molecules, chebi_text
from .common import (_CODE_LIKE, _MOL_ELEMENTS, _hash_order, _rdkit, inchikey, split_of_smiles, stable_hash,
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


def ccd_structure(comp_id: str):
    """(canonical SMILES, InChIKey, elements, ideal coords [n,3]) of a CCD component, or None."""
    import warnings

    from biotite.interface.rdkit import to_mol
    from biotite.structure.info import residue

    Chem = _rdkit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            atoms = residue(comp_id)
            mol = to_mol(atoms)
            Chem.SanitizeMol(mol)
            heavy = Chem.RemoveHs(mol)
        except Exception:
            return None
    smiles = Chem.MolToSmiles(heavy)
    if not smiles or "." in smiles:
        return None
    key = Chem.MolToInchiKey(heavy) or None
    return smiles, key, [str(e).capitalize() for e in atoms.element], np.asarray(atoms.coord, np.float32)


@functools.lru_cache(maxsize=16)
def _conformer_text_candidates(cap, seed, chebi_fraction, max_heavy) -> tuple:
    n_chebi = None if cap is None else int(round(cap * chebi_fraction))
    n_ccd = None if cap is None else cap - n_chebi
    chebi = chebi_molecules()
    by_key = {}
    for smiles, entry in chebi.items():
        by_key.setdefault(inchikey(smiles), (smiles, entry))
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
            text = chebi_text(entry["name"], entry["classes"], inchikey(smiles))
            yield smiles, {"smiles": smiles, "text": text, "source": "chebi"}

    split = lambda k, r: split_of_smiles(r["smiles"])  # noqa: E731
    ccd = take_per_split(ccd_stream(), n_ccd, split)
    return ccd + take_per_split(chebi_stream(), n_chebi, split)

