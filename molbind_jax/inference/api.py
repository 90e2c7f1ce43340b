"""User-facing Python API: load an exported MolBind and embed texts, molecules and pockets.

    from molbind_jax.inference.api import MolBindModel
    mb = MolBindModel.load("runs/demo/export")
    t = mb.embed_texts(["a beta-lactam antibiotic", ""])      # Embeddings, row 1 is NaN
    m = mb.embed_smiles(["CC(=O)Oc1ccccc1C(=O)O", "C1=CC"])   # graph tower by default
    mb.similarity(t, m)                                       # [2, 2] cosine, NaN where failed
    v = mb.encode("CCO", modality="graph")                    # [E]; see inference/encode.py

(`MolBind` is also exported under that name for `MolBind.load(path)`; it is this wrapper,
not the NNX module `molbind_jax.models.molbind.MolBind`.)

Every `embed_*` returns an `Embeddings`: a float32 array [N, E] with exactly one row per
input, in input order, L2-normalised, with one id per row (`.ids`, default the row index); an
input that cannot be embedded gets a NaN row and an entry {index (0-based), id, reason,
detail} in `.failures`. Nothing is dropped, so row i is always input i. Reasons are the
featurizers' SkipRecord reasons (molbind_data.featurize), the readers' (inference/readers.py)
and two of this module: out_of_vocabulary (a token id beyond the tower's table, which the
device would clamp) and nonfinite_output (a non-finite row, set to NaN). A single string is
one input everywhere. `encode` (inference/encode.py) takes every input form: strings, RDKit
molecules, pandas columns, files (docs/inference.md).

Batches have a fixed number of rows (`batch_size`, the last one padded with copies) and
padded lengths from a small set of buckets, so jit compiles a handful of shapes, not one per
batch. `embed_records(..., padding="original")` pads Uni-Mol inputs as the original's collater
instead (each batch to its longest molecule rounded up to a multiple of 8), and
`normalize=False` gives the raw projections the original's evaluation ranks.

`load` takes an export directory, or an original MolBind Lightning `.ckpt` together with the
files a `.ckpt` does not hold (`tokenizer=`, required; `gin_backbone=` for the GIN BatchNorm
statistics; `dictionaries=` to check the Uni-Mol dictionaries): see
`molbind_jax.convert.molbind.load_for_inference`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np

MIN_POW2_BUDGET = 64  # the smallest power-of-two budget (graph nodes and edges)
PADDINGS = ("buckets", "original")
TOWERS = ("text", "graph", "conformer", "smiles", "pocket")
# failure reasons of the inference path (the featurizers' SkipRecord reasons are the others)
OUT_OF_VOCABULARY = "out_of_vocabulary"
NONFINITE_OUTPUT = "nonfinite_output"
INVALID_INPUT = "invalid_input"


@dataclasses.dataclass
class Embeddings:
    """Rows aligned with the inputs; failed rows are NaN and listed in `failures` (each
    {index, id, reason, detail}); `ids[i]` is row i's id (default: str(i))."""
    vectors: np.ndarray
    failures: list[dict]
    ids: list[str] | None = None

    def __post_init__(self):
        if self.ids is None:
            self.ids = [str(i) for i in range(len(self.vectors))]
        if len(self.ids) != len(self.vectors):
            raise ValueError(f"{len(self.ids)} ids for {len(self.vectors)} rows")

    def __array__(self, dtype=None, copy=None):
        return self.vectors if dtype is None else self.vectors.astype(dtype)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def valid(self) -> np.ndarray:
        return np.all(np.isfinite(self.vectors), axis=1)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"size {n} exceeds the largest bucket {buckets[-1]}")


def _pow2_budget(n: int) -> int:
    return max(MIN_POW2_BUDGET, 1 << int(np.ceil(np.log2(max(n, 1)))))


def read_lines(path: str) -> list[str]:
    """All lines of a text file, empty ones kept (they are records that fail), without
    line endings; a final newline does not start another record."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _failure(index: int, err: Exception, id_: str | None = None) -> dict:
    reason = getattr(err, "reason", None) or type(err).__name__
    detail = getattr(err, "detail", None) or str(err)
    return {"index": int(index), "id": str(index) if id_ is None else str(id_), "reason": str(reason),
            "detail": str(detail)[:300]}


class MolBindModel:
    """An exported MolBind (model + config + tokenizer) with batched, failure-tolerant embed
    functions. Use `MolBindModel.load(path)`."""

    def __init__(self, model, config, tokenizer, *, batch_size: int = 32, seed: int = 0,
                 progress: bool = False, import_report=None):
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.seed = seed
        self.progress = progress
        self.import_report = import_report  # convert.molbind's report when loaded from a .ckpt
        self._fns: dict[tuple[str, bool], Callable] = {}
        self._warn_tokenizer_fit()

    def _warn_tokenizer_fit(self) -> None:
        """A tokenizer with more ids than the text tower's table is allowed (a tower trained
        on synthetic ids), but texts whose ids fall beyond it fail (out_of_vocabulary): say so."""
        if self.tokenizer is None or "text" not in getattr(self.config, "modalities", ()):
            return
        try:
            n = len(self.tokenizer)
        except TypeError:
            n = int(getattr(self.tokenizer, "vocab_size", 0))
        rows = int(self.config.tower("text").vocab_size)
        if n > rows:
            import logging
            logging.getLogger("molbind_jax.inference.api").warning(
                "the tokenizer has %d ids but the text tower's table has %d rows: texts with ids beyond "
                "it fail with reason out_of_vocabulary", n, rows)

    @classmethod
    def load(cls, path: str, *, gin_backbone: str | None = None, dictionaries: str | None = None,
             tokenizer: str | None = None, ckpt_config: dict | None = None,
             **kw) -> "MolBindModel":
        """Loads an export directory (`python -m molbind_jax.training.export`) or an original MolBind
        `.ckpt` file.

        For a `.ckpt`: `tokenizer` (the tokenizer directory it was trained with) is required,
        `gin_backbone` gives the GIN BatchNorm statistics the `.ckpt` lacks (without it a loud
        warning, as `convert.molbind`), `dictionaries` (a directory with the Uni-Mol
        dictionaries) is checked against the built-in order, `ckpt_config` overrides
        MolBindConfig fields that a state dict cannot tell (e.g. `{"bert": {"num_heads": 4}}`).
        An export carries all of these itself, so they are an error with one.
        """
        cls.check_loadable(path, gin_backbone=gin_backbone, dictionaries=dictionaries,
                           tokenizer=tokenizer, ckpt_config=ckpt_config)
        if os.path.isdir(path):
            from molbind_jax.inference.export_reader import load_export
            model, config, tok = load_export(path)
            return cls(model, config, tok, **kw)
        from molbind_jax.convert.molbind import load_for_inference
        model, config, tok, report = load_for_inference(
            path, gin_backbone=gin_backbone, dictionaries=dictionaries, tokenizer=tokenizer,
            config_overrides=ckpt_config)
        import logging
        logging.getLogger("molbind_jax.inference.api").info("%s", report.summary())
        return cls(model, config, tok, import_report=report, **kw)

    @staticmethod
    def check_loadable(path: str, *, gin_backbone: str | None = None, dictionaries: str | None = None,
                       tokenizer: str | None = None, ckpt_config: dict | None = None) -> None:
        """The checks `load` makes before reading any weights (the CLIs run them first to
        print a one-line error): the path exists, `.ckpt` options only with a `.ckpt`, a
        tokenizer for a `.ckpt`, its files exist, dictionaries in the built-in order."""
        if os.path.isdir(path):
            given = [n for n, v in (("gin_backbone", gin_backbone), ("dictionaries", dictionaries),
                                    ("tokenizer", tokenizer), ("ckpt_config", ckpt_config)) if v]
            if given:
                raise ValueError(f"{path} is an export directory, which carries its own tokenizer, "
                                 f"dictionaries and statistics; {', '.join(given)} apply to a .ckpt only")
            return
        if not os.path.exists(path):
            raise FileNotFoundError(f"no exported model or MolBind .ckpt at {path}")
        from molbind_jax.convert.molbind import check_inputs
        check_inputs(path, tokenizer=tokenizer, gin_backbone=gin_backbone, dictionaries=dictionaries)

    # ------------------------------------------------------------------ jitted towers

    def _fn(self, tower: str, normalize: bool = True) -> Callable:
        if (tower, normalize) not in self._fns:
            from flax import nnx
            if tower not in self.config.modalities:
                raise ValueError(f"this model has no {tower!r} tower; it has {self.config.modalities}")
            self._fns[tower, normalize] = nnx.jit(lambda m, b: m.embed(tower, b, normalize=normalize))
        return self._fns[tower, normalize]

    def _collate(self, tower: str, feats: list[dict], padding: str = "buckets"):
        """One modality's typed batch (the same collation as training), padded to a few
        bucket sizes: the spec's inference buckets (the text ones capped at the text tower's
        positions), powers of two where it has none; `padding="original"` pads atoms as the
        original's collater (each batch to its longest row rounded up to 8)."""
        from molbind_jax.data.batching import collate_modality
        from molbind_jax.modalities import spec
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        s = spec(tower)
        if tower == "text":
            feats = [dict(f, text_ids=np.asarray(f["text_ids"])[:self.max_text_len]) for f in feats]
        shapes = {}
        for key, n in s.needed(feats, 1).items():
            buckets = s.inference_buckets.get(key)
            if buckets is None:  # a per-shard budget (graphs): powers of two either way
                shapes[key] = _pow2_budget(n)
            elif padding == "original":  # the need rounded up to the spec's multiple (8)
                shapes[key] = s.default_shape(key, n)
            else:
                if tower == "text":
                    buckets = [b for b in buckets if b < self.max_text_len] + [self.max_text_len]
                shapes[key] = _bucket(n, buckets)
        return collate_modality(tower, feats, shapes=shapes)

    def embed_records(self, tower: str, feats: Sequence[dict], *, normalize: bool = True,
                      padding: str = "buckets", batch_size: int | None = None,
                      progress: bool | None = None) -> np.ndarray:
        """Embeds featurized records (DESIGN §1 fields of `tower`) in fixed-size batches of
        `batch_size` rows (default: the model's) in order -> [len, E]. Records must be valid
        (see embed_features): a batch the tower's check refuses (token ids beyond its table)
        raises ValueError, as in training.

        normalize: False gives the raw projections (the original's evaluation features).
        padding: Uni-Mol inputs padded to "buckets" (a few lengths, few compiles) or as the
          "original" collater (each batch to its longest row rounded up to 8); text and graphs
          are padded the same way either way (their padding does not change their rows).
        progress: a tqdm bar over the batches (default: the model's `progress`).
        """
        from molbind_jax.modalities import spec
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        bs = int(batch_size or self.batch_size)
        out = []
        starts = range(0, len(feats), bs)
        if (self.progress if progress is None else progress) and len(feats) > bs:
            from tqdm import tqdm
            starts = tqdm(starts, desc=f"embedding {tower}", unit="batch")
        for s in starts:
            chunk = list(feats[s:s + bs])
            real = len(chunk)
            # Copies of the first row fill the last batch: they never lengthen its padding.
            chunk = chunk + [chunk[0]] * (bs - real)
            batch = self._collate(tower, chunk, padding)
            spec(tower).check_batch(batch, self.config.tower(tower))  # ids beyond the table: raise
            emb = np.asarray(self._fn(tower, normalize)(self.model, batch), np.float32)
            out.append(emb[:real])
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    @property
    def embed_dim(self) -> int:
        for name in ("embed_dim", "proj_dim", "embedding_dim"):
            if hasattr(self.config, name):
                return int(getattr(self.config, name))
        return 512

    def check_record(self, tower: str, feat: dict) -> None:
        """The tower's own batch check (`ModalitySpec.check_batch`, as training runs it) on one
        record: a token id beyond the tower's table raises SkipRecord(out_of_vocabulary)
        instead of being clamped by the gather on device."""
        from molbind_data.featurize import SkipRecord
        from molbind_jax.modalities import spec
        from molbind_jax.modalities.base import ModalitySpec
        s = spec(tower)
        if type(s).check_batch is ModalitySpec.check_batch:
            return  # the tower checks nothing (graphs, atoms)
        try:
            s.check_batch(s.collate([feat], s.needed([feat])), self.config.tower(tower))
        except ValueError as err:
            raise SkipRecord(OUT_OF_VOCABULARY, str(err)) from err

    def embed_features(self, tower: str, featurize: Callable[[Any], dict], inputs: Sequence, *,
                       ids: Sequence[str] | None = None, normalize: bool = True,
                       batch_size: int | None = None, progress: bool | None = None,
                       padding: str = "buckets") -> Embeddings:
        """Featurizes every input (failures recorded, not raised), checks it against the
        tower (`check_record`), embeds the rest, and scatters them back so that row i is
        input i. An input that is an exception (a reader's failed record) is that row's
        failure; an output row that is not finite becomes NaN with reason nonfinite_output."""
        ids = [str(i) for i in range(len(inputs))] if ids is None else [str(x) for x in ids]
        feats, rows, failures = [], [], []
        for i, x in enumerate(inputs):
            try:
                if isinstance(x, Exception):
                    raise x
                feat = featurize(x)
                self.check_record(tower, feat)
                feats.append(feat)
                rows.append(i)
            except Exception as err:  # noqa: BLE001 -- any bad record is reported, not fatal
                failures.append(_failure(i, err, ids[i]))
        vecs = np.full((len(inputs), self.embed_dim), np.nan, np.float32)
        if feats:
            emb = self.embed_records(tower, feats, normalize=normalize, batch_size=batch_size,
                                     progress=progress, padding=padding)
            vecs = np.full((len(inputs), emb.shape[1]), np.nan, np.float32)
            bad = ~np.all(np.isfinite(emb), axis=1)
            emb[bad] = np.nan
            vecs[rows] = emb
            for r in np.nonzero(bad)[0]:
                i = rows[r]
                failures.append({"index": i, "id": ids[i], "reason": NONFINITE_OUTPUT,
                                 "detail": f"the {tower} tower returned a non-finite embedding"})
        return Embeddings(vecs, sorted(failures, key=lambda f: f["index"]), ids)

    # ------------------------------------------------------------------ public embedders

    @property
    def max_text_len(self) -> int:
        """256 as the original, or less if the text tower has fewer positions."""
        bert = getattr(self.config, "bert", None)
        return min(256, int(getattr(bert, "max_position_embeddings", 256)))

    def featurize_text(self, text: str, add_special_tokens: bool = True) -> dict:
        """[CLS] text [SEP] ids (as in training), truncated to max_text_len.

        add_special_tokens=False gives the ids of the original's retrieval evaluation (no
        [CLS]/[SEP], spec bug 1): the text tower then pools the first word piece."""
        from molbind_data.featurize import EMPTY_TEXT, SkipRecord
        from molbind_data.featurize import text as text_feat
        if not isinstance(text, str):
            raise SkipRecord(INVALID_INPUT, f"a text must be a str, got {type(text).__name__}")
        text = text_feat.normalize(text)  # SkipRecord(empty_text) for empty lines
        if hasattr(self.tokenizer, "encode") and hasattr(self.tokenizer, "_tok"):
            ids = self.tokenizer.encode(text, max_length=self.max_text_len,
                                        add_special_tokens=add_special_tokens)
        else:  # a transformers tokenizer (export_reader.load_export)
            ids = self.tokenizer(text, truncation=True, max_length=self.max_text_len,
                                 add_special_tokens=add_special_tokens)["input_ids"]
        if len(ids) == 0:
            raise SkipRecord(EMPTY_TEXT, "text has no tokens")
        return {"text_ids": np.asarray(ids, np.int32)}

    def featurizer(self, tower: str) -> Callable[[tuple[int, Any]], dict]:
        """(index, input) -> the record of `tower`: text (str); graph, conformer and smiles
        (a SMILES str or an RDKit Mol; for conformer a Mol must have a conformer, whose
        coordinates are used, and a SMILES gets a seeded RDKit ETKDG conformer); pocket
        ((ligand SDF, protein PDB))."""
        from molbind_data.featurize import INVALID_SMILES, SkipRecord
        from molbind_data.featurize import conformer as conf
        from molbind_data.featurize import graph as graph_feat
        from molbind_data.featurize import smiles as smiles_tok
        if tower not in TOWERS:
            raise ValueError(f"modality must be one of {TOWERS}, got {tower!r}")
        if tower not in self.config.modalities:
            raise ValueError(f"this model has no {tower!r} tower (towers: {', '.join(self.config.modalities)})")

        def molecule(x):  # None for a SMILES string
            if isinstance(x, str):
                return None
            if not (hasattr(x, "GetAtoms") and hasattr(x, "GetNumConformers")):
                raise SkipRecord(INVALID_INPUT, f"expected a SMILES str or an RDKit Mol, got {type(x).__name__}")
            return x

        def featurize(item):
            i, x = item
            if isinstance(x, Exception):  # a reader's failed record
                raise x
            if tower == "text":
                return self.featurize_text(x)
            if tower == "pocket":
                from molbind_data.featurize import pocket as pocket_feat
                if not (isinstance(x, (tuple, list)) and len(x) == 2):
                    raise SkipRecord(INVALID_INPUT, f"a pocket is (ligand_sdf, protein_pdb), got {x!r}"[:200])
                return pocket_feat.extract_pocket(x[1], x[0])
            mol = molecule(x)
            if tower == "graph":
                return graph_feat.mol_to_graph(mol) if mol is not None else graph_feat.smiles_to_graph(x)
            if tower == "conformer":
                if mol is None:
                    atoms, coords, _ = conf.generate_conformers(x, num_conformers=1, seed=self.seed)
                    return conf.unimol_input(atoms, coords, seed=self.seed)
                atoms, coords = conf.mol_conformer(mol)  # SkipRecord(no_conformer) without one
                return conf.unimol_input(atoms, coords, seed=self.seed + i)
            # smiles tower: the string itself, or the Mol's canonical SMILES
            s = x if mol is None else graph_feat.canonical_smiles(mol)
            if mol is not None and not s:
                raise SkipRecord(INVALID_SMILES, "RDKit cannot write this molecule as SMILES")
            smiles_tok.tokens(s)  # refuses what is not one SMILES string (a counted failure)
            return {"smiles": s.strip()}
        return featurize

    def _embed(self, tower: str, items: Sequence, ids=None, **kw) -> Embeddings:
        return self.embed_features(tower, self.featurizer(tower), list(enumerate(items)), ids=ids, **kw)

    def embed_texts(self, texts: str | Sequence[str]) -> Embeddings:
        """One row per text (a single str is one text); empty / whitespace-only texts fail
        with 'empty_text', texts with ids beyond the tower's table with 'out_of_vocabulary'."""
        return self._embed("text", [texts] if isinstance(texts, str) else list(texts))

    def embed_smiles(self, smiles: str | Sequence[str], tower: str = "graph") -> Embeddings:
        """Molecules from SMILES (a single str is one molecule) through the 2D graph tower
        (default), with tower="conformer" through an RDKit ETKDG conformer (seeded) and the
        3D tower, or with tower="smiles" through the SMILES-string tower of a model that has
        one (experiments/configs/smiles.py)."""
        if tower not in ("graph", "conformer", "smiles"):
            raise ValueError(f"tower must be 'graph', 'conformer' or 'smiles', got {tower!r}")
        return self._embed(tower, [smiles] if isinstance(smiles, str) else list(smiles))

    def embed_sdf(self, path: str, *, id_property: str | None = None) -> Embeddings:
        """One row per record of the SDF file (.sdf or .sdf.gz; its own 3D coordinates,
        conformer tower), ids from `_Name` or `id_property`; an unparsable record, or one
        missing its $$$$ line, gets a NaN row. A missing file raises SkipRecord."""
        from molbind_data.featurize import SkipRecord, UNREADABLE_FILE
        from molbind_jax.inference import readers
        try:
            ins = readers.read_sdf(path, id_property=id_property)
        except OSError as err:
            raise SkipRecord(UNREADABLE_FILE, f"{path}: {err}") from err
        return self._embed("conformer", ins.items, ins.ids)

    def embed_pockets(self, complexes: Sequence[tuple[str, str]]) -> Embeddings:
        """One row per (ligand_sdf, protein_pdb): the pocket cut around the ligand."""
        return self._embed("pocket", list(complexes))

    def encode(self, inputs, modality: str, **kw):
        """sentence-transformers-style embedding of texts, molecules or pockets; see
        `molbind_jax.inference.encode.encode` (returns an array, or an Embeddings with ids and
        failures when return_failures=True)."""
        from molbind_jax.inference.encode import encode
        return encode(self, inputs, modality, **kw)

    @staticmethod
    def similarity(a, b) -> np.ndarray:
        """Cosine similarity [len(a), len(b)] of L2-normalised embeddings (NaN rows stay
        NaN)."""
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        return a @ b.T


MolBind = MolBindModel  # `from molbind_jax.inference.api import MolBind; MolBind.load(path)`
