"""Molecules -> Uni-Mol conformer inputs (spec section 3 "Conformers").

Two halves:
  * `generate_conformers`: RDKit ETKDG (with hydrogens) + MMFF, seeded, the way Uni-Mol's
    data scripts make conformers. Uni-Mol's 2D fallback (z = 0) when embedding fails is off
    by default (SkipRecord "2d_fallback"); `allow_2d_fallback=True` restores it.
  * `unimol_input` / `pair_arrays` / `collate_unimol`: the original `D3Dataset` steps 3-8
    and `D3Collater`, bit-for-bit where the original is deterministic, so that parity tests
    and the comparison harness can feed PyTorch and JAX the same arrays.
"""
from __future__ import annotations

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem
from scipy.spatial import distance_matrix

from molbind_data.featurize import (
    EMPTY_MOLECULE,
    INVALID_SMILES,
    NO_CONFORMER,
    TOO_MANY_ATOMS,
    TWO_D_FALLBACK,
    UNREADABLE_FILE,
    SkipRecord,
)
from molbind_data.featurize.checks import atomic_number, check_coordinates, check_elements, check_flat
from molbind_data.featurize.dictionaries import MOL_DICTIONARY, Dictionary
from molbind_data.featurize.graph import canonical_smiles, parse_smiles

# Added here (featurize/__init__.py is shared and fixed): atoms and coordinates that disagree.
MALFORMED_CONFORMER = "malformed_conformer"

# The original asserts 0 < n < 512 after cropping; beyond that its model was never run.
HARD_MAX_ATOMS = 512


def _embed(mol: Chem.Mol, num_conformers: int, seed: int, timeout: int) -> list[int]:
    """ETKDGv3 conformers; a second pass from random coordinates, as Uni-Mol retries."""
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1  # the builders parallelise over records, not inside RDKit
    if timeout:
        params.timeout = int(timeout)

    def embed():
        # a timed-out embedding returns [-1] and no conformer: keep only real ids
        ids = AllChem.EmbedMultipleConfs(mol, numConfs=num_conformers, params=params)
        existing = {c.GetId() for c in mol.GetConformers()}
        return [i for i in ids if i >= 0 and i in existing]

    ids = embed()
    if not ids:
        params.useRandomCoords = True
        params.maxIterations = 5000
        ids = embed()
    return ids


def _optimize(mol: Chem.Mol, max_iters: int = 200) -> None:
    """MMFF94 relaxation of every conformer in place (UFF when MMFF lacks parameters)."""
    try:
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=max_iters)
        elif AllChem.UFFHasAllMoleculeParams(mol):
            AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=max_iters)
        # else: keep the ETKDG geometry, which is already reasonable
    except Exception:  # noqa: BLE001 - a failed relaxation leaves valid ETKDG coordinates
        pass


def generate_conformers(smiles_or_mol, num_conformers: int = 10, seed: int = 42, *,
                        allow_2d_fallback: bool = False, timeout: int = 60):
    """Seeded RDKit conformers of a molecule, hydrogens included.

    Returns (atoms, coords, used_2d_fallback): `atoms` element symbols (heavy atoms first,
    then the added H, RDKit's order), `coords` float32 [k, n, 3] with 1 <= k <= num_conformers.
    When ETKDG cannot embed the molecule (twice; each pass stops after `timeout` seconds,
    0 = no limit), the molecule is skipped with TWO_D_FALLBACK ("2d_fallback"): a flat drawing
    is no 3D conformer. `allow_2d_fallback=True` uses Uni-Mol's fallback instead (its data
    scripts' behaviour, kept for parity): one 2D depiction with z = 0 (k = 1) and
    `used_2d_fallback=True`, so builders can count it. A molecule with a dummy or query atom
    (`*`, atomic number 0) is refused with UNKNOWN_ELEMENT before any embedding, as the graph
    featurizer refuses it (featurize/checks.py).
    """
    if isinstance(smiles_or_mol, str):
        mol = parse_smiles(smiles_or_mol)
    elif isinstance(smiles_or_mol, Chem.Mol):
        mol = Chem.Mol(smiles_or_mol)
        mol.RemoveAllConformers()
    else:
        raise SkipRecord(INVALID_SMILES, f"not a SMILES or RDKit molecule: {type(smiles_or_mol).__name__}")
    if mol.GetNumAtoms() == 0:
        raise SkipRecord(EMPTY_MOLECULE, "molecule without atoms")
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be >= 1, got {num_conformers}")
    for atom in mol.GetAtoms():
        atomic_number(atom, where=f"atom {atom.GetIdx()}")

    mol = Chem.AddHs(mol)
    atoms = [a.GetSymbol() for a in mol.GetAtoms()]
    logs = rdBase.BlockLogs()  # quiet RDKit, restoring the caller's settings after
    try:
        ids = _embed(mol, num_conformers, seed, timeout)
        if ids:
            _optimize(mol)
            coords = np.stack([mol.GetConformer(i).GetPositions() for i in ids]).astype(np.float32)
            return atoms, coords, False
        if not allow_2d_fallback:
            raise SkipRecord(TWO_D_FALLBACK, f"ETKDG embedding failed for {canonical_smiles(mol)[:200]} and "
                                             "the flat 2D fallback is off (allow_2d_fallback)")
        try:
            AllChem.Compute2DCoords(mol)
        except Exception as err:  # noqa: BLE001
            raise SkipRecord(NO_CONFORMER, f"embedding and 2D depiction failed: {err}") from err
        coords = mol.GetConformer().GetPositions().astype(np.float32)[None]
        coords[..., 2] = 0.0
        return atoms, coords, True
    finally:
        del logs


def unimol_input(atoms, coords, dictionary: Dictionary = MOL_DICTIONARY, max_atoms: int = 256,
                 seed: int = 0) -> dict:
    """Uni-Mol tokens and coordinates of one molecule (spec "Conformers" steps 3-7).

    atoms: n element symbols; coords: [k, n, 3] (or [n, 3]) -- all k conformers are kept and
    cropped identically, so the input pipeline can pick one later (the original picks one
    at random before these steps; the steps commute with that choice).
      3. drop "H" atoms, unless every atom is H (then keep all, as the original)
      4. above `max_atoms` (> 0) keep a seeded random permutation's first `max_atoms` atoms
      5. tokens via the dictionary, unknown symbols -> [UNK]
      6. centre each conformer (float32 mean, after cropping)
      7. [CLS] first and [SEP] last, both at the origin
    Before these steps the inputs are checked (featurize/checks.py): every symbol an element
    (UNKNOWN_ELEMENT for `*` and other non-elements), every coordinate finite
    (NONFINITE_COORDINATES) and, with two or more atoms, not all atoms at one point
    (ZERO_COORDINATES). Flat 2D depictions need the bonds to be told apart from planar
    molecules: `mol_conformer` checks those.
    Returns conformer_tokens int32 [n'+2] and conformer_coords float32 [k, n'+2, 3].
    """
    atoms = np.asarray([str(a) for a in atoms])
    coords = np.asarray(coords, dtype=np.float32)
    if coords.ndim == 2:
        coords = coords[None]
    if atoms.size == 0:
        raise SkipRecord(EMPTY_MOLECULE, "no atoms")
    if coords.ndim != 3 or coords.shape[1:] != (len(atoms), 3) or coords.shape[0] == 0:
        raise SkipRecord(MALFORMED_CONFORMER, f"{len(atoms)} atoms but coordinates of shape {coords.shape}")
    check_elements(atoms)
    check_coordinates(coords)

    heavy = atoms != "H"
    if heavy.any():
        atoms, coords = atoms[heavy], coords[:, heavy]
    if max_atoms and max_atoms > 0 and len(atoms) > max_atoms:
        keep = np.random.default_rng(seed).permutation(len(atoms))[:max_atoms]
        atoms, coords = atoms[keep], coords[:, keep]
    if len(atoms) >= HARD_MAX_ATOMS:
        raise SkipRecord(TOO_MANY_ATOMS, f"{len(atoms)} atoms without cropping (limit {HARD_MAX_ATOMS - 1})")

    tokens = np.array([dictionary.index(a) for a in atoms], dtype=np.int32)
    coords = coords - coords.mean(axis=1, keepdims=True)  # float32 throughout, as the original
    k = coords.shape[0]
    zero = np.zeros((k, 1, 3), dtype=np.float32)
    return {
        "conformer_tokens": np.concatenate([[Dictionary.CLS], tokens, [Dictionary.SEP]]).astype(np.int32),
        "conformer_coords": np.concatenate([zero, coords, zero], axis=1).astype(np.float32),
    }


def pair_arrays(tokens, coords, vocab_size: int):
    """The original's host-side pair inputs (spec step 8) for one molecule.

    distance: scipy `distance_matrix` in float64 (the original concatenates float64 zero rows
    for [CLS]/[SEP], which upcasts), cast to float32 -- [N, N]; edge_type: tok_i * V + tok_j,
    int64 [N, N] (torch long in the original).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    xyz = np.asarray(coords, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape != (len(tokens), 3):
        raise ValueError(f"coords must be [N, 3] for {len(tokens)} tokens, got {xyz.shape}")
    distance = distance_matrix(xyz, xyz).astype(np.float32)
    edge_type = tokens[:, None] * int(vocab_size) + tokens[None, :]
    return distance, edge_type


def padded_size(n: int, multiple: int = 8) -> int:
    """unicore's `collate_tokens` size rule: round up to a multiple (float formula kept)."""
    if multiple != 1 and n % multiple != 0:
        n = int(((n - 0.1) // multiple + 1) * multiple)
    return n


def collate_unimol(samples, vocab_size: int = len(MOL_DICTIONARY), pad_to_multiple: int = 8):
    """`D3Collater` on a list of (tokens [N_i], coords [N_i, 3]) -> (src_tokens, src_distance, src_edge_type).

    Padded to the batch max rounded up to a multiple of 8; tokens with [PAD]=0, distance and
    edge types with 0. Shapes [B, P], [B, P, P], [B, P, P]; int64 / float32 / int64.
    """
    if not samples:
        raise ValueError("collate_unimol needs at least one sample")
    size = padded_size(max(len(t) for t, _ in samples), pad_to_multiple)
    b = len(samples)
    src_tokens = np.zeros((b, size), dtype=np.int64)
    src_distance = np.zeros((b, size, size), dtype=np.float32)
    src_edge_type = np.zeros((b, size, size), dtype=np.int64)
    for i, (tokens, coords) in enumerate(samples):
        n = len(tokens)
        distance, edge_type = pair_arrays(tokens, coords, vocab_size)
        src_tokens[i, :n] = tokens
        src_distance[i, :n, :n] = distance
        src_edge_type[i, :n, :n] = edge_type
    return src_tokens, src_distance, src_edge_type


def _read_sdf_blocks(path: str) -> list[str]:
    """The molblocks of an SDF as text (records end with a '$$$$' line)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as err:
        raise SkipRecord(UNREADABLE_FILE, f"{path}: {err}") from err
    blocks, current = [], []
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == "$$$$":
            blocks.append("".join(current))
            current = []
        else:
            current.append(line)
    if "".join(current).strip():
        blocks.append("".join(current))
    return blocks


def _parse_sdf_record(block: str, sanitize: bool):
    # an SD supplier (not MolFromMolBlock) so that the record's data fields become properties
    supplier = Chem.SDMolSupplier()
    supplier.SetData((block if block.endswith("\n") else block + "\n") + "$$$$\n", sanitize=sanitize,
                     removeHs=False)
    return supplier[0] if len(supplier) else None


def molblock_to_mol(block: str) -> Chem.Mol | None:
    """RDKit molecule with its coordinates and hydrogens; None when RDKit cannot parse it.

    Sanitization failures (e.g. unusual valences in crystal ligands) are retried without
    sanitization: the element symbols and coordinates, all a conformer needs, are intact.
    """
    logs = rdBase.BlockLogs()  # quiet RDKit, restoring the caller's settings after
    try:
        mol = _parse_sdf_record(block, sanitize=True)
        if mol is None:
            mol = _parse_sdf_record(block, sanitize=False)
            if mol is not None:
                mol.UpdatePropertyCache(strict=False)
    except Exception:  # noqa: BLE001
        mol = None
    finally:
        del logs
    if mol is None or mol.GetNumAtoms() == 0 or mol.GetNumConformers() == 0:
        return None
    return mol


def iter_sdf(path: str):
    """(index, molblock, mol or None) for every record of an SDF (UNREADABLE_FILE if unopenable)."""
    for i, block in enumerate(_read_sdf_blocks(path)):
        yield i, block, molblock_to_mol(block)


def mol_conformer(mol: Chem.Mol, *, allow_flat: bool = False):
    """(atoms, coords float32 [1, n, 3]) of a molecule's first conformer, hydrogens included.

    Refused (SkipRecord): NO_CONFORMER without coordinates, UNKNOWN_ELEMENT for a dummy atom,
    NONFINITE_COORDINATES / ZERO_COORDINATES, and FLAT_COORDINATES for a 2D depiction (every z
    equal and a tetrahedral atom, `checks.is_flat_depiction`) unless `allow_flat=True`.
    """
    if mol.GetNumConformers() == 0:
        raise SkipRecord(NO_CONFORMER, "molecule has no coordinates")
    for atom in mol.GetAtoms():
        atomic_number(atom, where=f"atom {atom.GetIdx()}")
    atoms = [a.GetSymbol() for a in mol.GetAtoms()]
    xyz = mol.GetConformer().GetPositions()
    check_coordinates(xyz)
    if not allow_flat:
        check_flat(mol, xyz)
    return atoms, xyz.astype(np.float32)[None]


def sdf_to_unimol(path: str, dictionary: Dictionary = MOL_DICTIONARY, max_atoms: int = 256, seed: int = 0, *,
                  allow_flat: bool = False):
    """Every molecule of an SDF with its own 3D coordinates, as Uni-Mol inputs.

    Returns (records, skipped): each record is a dict with index (position in the file),
    name (the _Name line), smiles (canonical, '' if unsanitizable), props (the SDF data
    fields as strings), conformer_tokens and conformer_coords [1, n+2, 3]. A molecule RDKit
    cannot parse, or whose coordinates `mol_conformer` refuses (a 2D depiction unless
    `allow_flat`), is skipped and counted in `skipped` ({reason: count}); an unopenable file,
    or one in which no molecule parses, raises SkipRecord(UNREADABLE_FILE).
    """
    records, skipped, total = [], {}, 0
    for i, _, mol in iter_sdf(path):
        total += 1
        try:
            if mol is None:
                raise SkipRecord(UNREADABLE_FILE, f"{path} record {i}: RDKit cannot parse it")
            atoms, coords = mol_conformer(mol, allow_flat=allow_flat)
            arrays = unimol_input(atoms, coords, dictionary, max_atoms=max_atoms, seed=seed + i)
        except SkipRecord as skip:
            skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
            continue
        records.append({
            "index": i,
            "name": mol.GetProp("_Name") if mol.HasProp("_Name") else "",
            "smiles": canonical_smiles(mol),
            "props": {k: str(v) for k, v in mol.GetPropsAsDict(includePrivate=False).items()},
            **arrays,
        })
    if total == 0 or not records and skipped.get(UNREADABLE_FILE, 0) == total:
        raise SkipRecord(UNREADABLE_FILE, f"{path}: no molecule could be read")
    return records, skipped
