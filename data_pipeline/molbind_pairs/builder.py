"""TFDS builders for MolBind pair data: one implementation, three sources, four configs.

    molbind_mini   the embedded default (molbind_data.sources.mini), built offline
    molbind_m4     the MolBind-M4 release, from a manual_dir (MANUAL_DOWNLOAD_INSTRUCTIONS)
    molbind_pairs  a user file of pairs: source_options={"input": path}

Each has one config per stored pair type of the table (data_pipeline/schema.py: graph_text,
conformer_text, graph_conformer, conformer_pocket), whose features are the table's fields of
the pair's two modalities (docs/DESIGN.md section 1), and the splits train/validation/test.
The subclasses only set SOURCE; everything else (features, parallel featurization, build
report) is shared.

    builder = tfds.builder("molbind_mini/graph_text", data_dir=DIR,
                           source_options={"max_records": 100}, workers=2)
    builder.download_and_prepare()   # writes DIR/molbind_mini/graph_text/1.3.0/build_report.json

From the shell: `tfds build molbind_mini --imports=molbind_data.molbind_pairs.builder
--data_dir=DIR` (or `python -m molbind_data.build`, which prints the report).

Featurization runs in a local process Pool (see parallel.py). For builds beyond one machine
TFDS would run `_generate_examples` as an Apache Beam pipeline (`beam.Create(raw records) |
beam.Map(featurize_one)`, with counters for skips); apache_beam is not installed here, so that
path is documented in docs/data.md but not implemented.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import time

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from molbind_data import schema
from molbind_data.build_report import BuildStats
from molbind_data.cli import InputError
from molbind_data.featurize import text as text_mod
from molbind_data.molbind_pairs import parallel
from molbind_data.sources.m4_layout import MANUAL_DOWNLOAD_INSTRUCTIONS

PAIRS = schema.stored_pair_types()
SPLITS = ("train", "validation", "test")
REPORT = "build_report.json"


@dataclasses.dataclass
class PairConfig(tfds.core.BuilderConfig):
    pair: str = "graph_text"


def _tfds_feature(f: schema.Feature):
    if f.dtype == "text":
        return tfds.features.Text()
    # More than one unknown dimension needs an explicit encoding in TFDS.
    encoding = tfds.features.Encoding.ZLIB if sum(d is None for d in f.shape) > 1 else tfds.features.Encoding.NONE
    return tfds.features.Tensor(shape=f.shape, dtype=np.dtype(f.dtype), encoding=encoding)


def features_for(pair: str) -> tfds.features.FeaturesDict:
    """The stored record of one pair type: the table's fields (docs/DESIGN.md section 1)."""
    return tfds.features.FeaturesDict({f.name: _tfds_feature(f) for f in schema.record_features(pair)})


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


class MolbindBuilderBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared implementation; subclasses set SOURCE (a key of parallel.SOURCES)."""

    SOURCE = "mini"
    # True: the examples are stored in the order the source yields them (TFDS's
    # disable_shuffling: no shuffle by key hash when writing, and reading with
    # shuffle_files=False goes through the shards one after the other). Otherwise TFDS stores
    # them in the order of a hash of their keys.
    ORDERED = False
    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {"1.0.0": "First release: four pair types, scaffold / target splits.",
                     "1.1.0": "molbind_mini conformer_pocket: ligands split by scaffold within their "
                              "targets (held-out targets: source option pocket_split=target).",
                     "1.3.0": "Geometry and element checks: a molecule RDKit cannot embed is skipped "
                              "(2d_fallback) instead of stored with flat coordinates; a dummy atom is "
                              "refused by every featurizer; a pocket leaves out the HETATM copy of its "
                              "ligand; splits left empty are reported (empty_splits)."}
    BUILDER_CONFIGS = [PairConfig(name=p, pair=p, description=schema.pair_type(p).doc) for p in PAIRS]
    DEFAULT_CONFIG_NAME = "graph_text"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS's own lookup touches `importlib_resources`, a dependency the pinned environment
        # lacks; the answer (this file, for checksums lookup) is simple to give directly.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, source_options: dict | None = None, workers: int | None = None,
                 chunksize: int = 16, **kwargs):
        self._source_options = dict(source_options or {})
        self._workers = workers
        self._chunksize = chunksize
        self._stats: dict[str, BuildStats] = {}
        self._empty: dict[str, str] = {}  # split -> why it has no examples (left out)
        super().__init__(**kwargs)

    # -- options and metadata

    def _options(self) -> dict:
        try:
            module = parallel.source_module(self._source_options.get("source_module", self.SOURCE))
        except ImportError:
            module = None
        resolve = getattr(module, "resolve_options", None)
        options = resolve(self._source_options) if resolve else dict(self._source_options)
        options.setdefault("tokenizer_path", None)
        if options["tokenizer_path"] is None:
            options["tokenizer_path"] = text_mod.default_tokenizer_dir()
        return options

    def _info(self) -> tfds.core.DatasetInfo:
        try:
            module = parallel.source_module(self._source_options.get("source_module", self.SOURCE))
        except ImportError:  # the info of a dataset can be read without its source installed
            module = None
        pair = self.builder_config.pair
        metadata = tfds.core.MetadataDict(
            source=self.SOURCE,
            pair=pair,
            tokenizer=self._options()["tokenizer_path"],
            licenses=_jsonable(getattr(module, "LICENSES", {})),
            splits_recipe=(getattr(module, "__doc__", None) or "").split("Splits.", 1)[-1].split("\n\n")[0].strip(),
        )
        return self.dataset_info_from_configs(
            description=f"MolBind pairs ({self.SOURCE}): {schema.pair_type(pair).doc}",
            features=features_for(pair),
            homepage="https://github.com/tengxiao1/MolBind",
            metadata=metadata,
            disable_shuffling=self.ORDERED,
        )

    # -- generation

    def _split_generators(self, dl_manager):
        options = self._options()
        if getattr(self, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            options["manual_dir"] = os.fspath(dl_manager.manual_dir)
        self._stats, self._empty = {}, {}
        source = parallel.source_module(options.get("source_module", self.SOURCE))
        pair = self.builder_config.pair
        generators = {}
        for split in SPLITS:
            # TFDS refuses a split without examples ("No examples were yielded"), so each split
            # is featurized in this process up to its first example before TFDS starts: a split
            # whose records are all skipped (or that has none) is left out and reported under
            # `empty_splits`, and the others are built.
            stats = self._stats.setdefault(split, BuildStats())
            records = iter(source.raw_records(pair, split, options))
            seen: set[str] = set()
            head = parallel.featurized(options.get("source_module", self.SOURCE), pair, options, records,
                                       stats, workers=0, seen=seen, progress=False)
            first = next(head, None)
            head.close()
            if first is None:
                self._empty[split] = self._empty_reason(split, stats)
                logging.warning("%s/%s: split %r left out: %s", self.name, pair, split, self._empty[split])
                continue
            generators[split] = self._generate_examples(split, options, records, first=first, seen=seen)
        return generators

    def _empty_reason(self, split: str, stats: BuildStats) -> str:
        if not stats.read:
            return "no records"
        errors = sum(v for k, v in stats.skipped.items() if k.startswith("error:"))
        if errors == stats.read:
            # Every record failing the same unexpected way is a code or setup bug, not bad data.
            raise RuntimeError(f"{self.name}/{self.builder_config.pair}/{split}: all {stats.read} records "
                               f"failed: {dict(stats.skipped)}")
        return f"all {stats.read} records skipped ({', '.join(f'{k} {v}' for k, v in sorted(stats.skipped.items()))})"

    def _generate_examples(self, split: str, options: dict, records=None, *, first=None, seen=None):
        source = options.get("source_module", self.SOURCE)
        pair = self.builder_config.pair
        stats = self._stats.setdefault(split, BuildStats())
        if records is None:
            records = parallel.source_module(source).raw_records(pair, split, options)
        if first is not None:
            yield first
        yield from parallel.featurized(source, pair, options, records, stats, workers=self._workers,
                                       chunksize=self._chunksize, desc=f"{self.name}/{pair}/{split}", seen=seen)

    # -- build with a report

    def report_path(self) -> str:
        return os.path.join(os.fspath(self.data_dir), REPORT)

    def read_report(self) -> dict | None:
        path = self.report_path()
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def download_and_prepare(self, *args, **kwargs):
        """TFDS download_and_prepare, plus build_report.json; reuses a finished build."""
        options = _jsonable({k: v for k, v in self._options().items() if k != "manual_dir"})
        if self.is_prepared():
            report = self.read_report()
            if report is not None and report.get("options") not in (None, options):
                raise InputError(
                    f"{self.data_dir} was built with options {report['options']}, not {options}; "
                    "use another --data_dir or delete that directory to rebuild")
            return super().download_and_prepare(*args, **kwargs)
        start = time.time()
        self._stats, self._empty = {}, {}
        super().download_and_prepare(*args, **kwargs)
        total = BuildStats()
        for stats in self._stats.values():
            total.merge(stats)
        # Written for every build, an empty one included: `empty_splits` names each split left
        # out of the dataset (TFDS stores no empty split) with the reason.
        total.write(os.fspath(self.data_dir), dataset=self.name, config=self.builder_config.name,
                    version=str(self.version), options=options, wall_seconds=round(time.time() - start, 1),
                    splits={s: st.as_dict() for s, st in self._stats.items()},
                    empty_splits=dict(self._empty))

    def is_prepared(self) -> bool:
        return os.path.exists(os.path.join(os.fspath(self.data_dir), "dataset_info.json"))


class MolbindMini(MolbindBuilderBase):
    """The embedded default, built offline from packaged chemistry data (sources/mini/)."""

    SOURCE = "mini"
    VERSION = tfds.core.Version("1.4.0")
    RELEASE_NOTES = {**MolbindBuilderBase.RELEASE_NOTES,
                     "1.4.0": "molbind_mini: more data. graph_text adds PubChem molecules (chemicals' "
                              "PubChem table: common name, IUPAC name, synonyms) after the ChEBI ones; "
                              "graph_conformer 25,000 QM9 geometries (was 4,000); conformer_text "
                              "10,000 records, mostly CCD ideal coordinates (was 1,500); the CCD "
                              "bond graphs are read directly from the dictionary."}


class MolbindM4(MolbindBuilderBase):
    """The MolBind-M4 release (sources/m4.py), read from a manually downloaded folder.

    Stored in the release's file order (sources/m4_layout.py), so that a split read back in
    order gives the original's in-batch evaluation batches (64 consecutive records).
    """

    SOURCE = "m4"
    ORDERED = True
    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {**MolbindBuilderBase.RELEASE_NOTES,
                     "1.2.0": "molbind_m4: records stored in the release's file order (no TFDS "
                              "shuffling); PyG Data graph files read without torch_geometric."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS


class MolbindPairs(MolbindBuilderBase):
    """User-supplied pairs (sources/pairs.py): source_options={"input": path to the file}."""

    SOURCE = "pairs"
