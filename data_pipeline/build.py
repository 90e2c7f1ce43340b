"""Build MolBind pair datasets (TFDS shards) and print their build reports.

    python -m molbind_data.build --source=mini --data_dir=data/tfds
    python -m molbind_data.build --source=mini --pair=graph_text --max_records=200 --workers=2
    python -m molbind_data.build --source=m4 --manual_dir=/data/MolBind4M --data_dir=DIR
    python -m molbind_data.build --source=pairs --input=my_pairs.csv --pair=graph_text --data_dir=DIR

All four pair types are built by default (mini, m4); `pairs` needs --pair. The m4 manual
directory must have the release's layout (data_pipeline/sources/m4_layout.py); a missing or
misplaced folder stops the build with the expected tree. A finished
(dataset, config) is reused, so an interrupted build resumes at the first unfinished pair type.
`ensure_built()` is what training calls to build molbind_mini on first use.
"""
from __future__ import annotations

import json
import os
import sys
import time

DATASETS = {"mini": "molbind_mini", "m4": "molbind_m4", "pairs": "molbind_pairs"}


def provided_pairs(source: str) -> tuple[str, ...]:
    """The stored pair types a source declares (`PROVIDES` of its module), checked against the
    table; importing the source module reads no data."""
    from molbind_data import schema
    from molbind_data.molbind_pairs.parallel import source_module

    module = source_module(source)
    if not hasattr(module, "PROVIDES"):
        raise ValueError(f"source {source!r} ({module.__name__}) declares no PROVIDES, the stored pair "
                         "types it builds")
    provided = schema.check_pairs(module.PROVIDES)
    views = {p: schema.pair_type(p).records_of for p in provided if schema.pair_type(p).records_of}
    if views:  # a view has no TFDS config: it reads the records of the pair type it names
        raise ValueError(f"source {source!r} PROVIDES views {sorted(views)}, which are not built; "
                         f"list the pair types they read instead: {sorted(set(views.values()))}")
    return provided


def _builder_cls(source: str):
    from molbind_data.molbind_pairs import builder

    return {"mini": builder.MolbindMini, "m4": builder.MolbindM4, "pairs": builder.MolbindPairs}[source]


def default_data_dir(data_dir: str | None = None) -> str:
    """--data_dir, else $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets)."""
    if data_dir:
        return data_dir
    if os.environ.get("TFDS_DATA_DIR"):
        return os.environ["TFDS_DATA_DIR"]
    import tensorflow_datasets as tfds

    return os.fspath(tfds.core.constants.DATA_DIR)


def build(source: str = "mini", data_dir: str | None = None, pairs=None, *, input_path: str | None = None,
          manual_dir: str | None = None, workers: int | None = None, max_records: int | None = None,
          options: dict | None = None, verbose: bool = True) -> dict[str, dict]:
    """Build (or reuse) the pair types of one source; returns {pair: build report}."""
    import tensorflow_datasets as tfds

    if source not in DATASETS:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(DATASETS)}")
    provided = provided_pairs(source)
    if pairs is None:
        if source == "pairs":
            raise ValueError("--source=pairs needs --pair (the pair type stored in --input)")
        pairs = provided
    pairs = [pairs] if isinstance(pairs, str) else list(pairs)
    source_options = dict(options or {})
    if input_path:
        source_options["input"] = input_path
    if max_records is not None:
        source_options["max_records"] = int(max_records)
    data_dir = default_data_dir(data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    for pair in pairs:  # every name is checked before anything is built (a build can take hours)
        if pair not in provided:
            from molbind_data import schema

            stored = schema.pair_type(pair).stored_as  # unknown names list the known ones
            raise ValueError(f"the {source} source does not provide {pair!r}"
                             + (f" (a view of {stored}: build {stored})" if stored != pair else "")
                             + f"; it provides {provided}")
    reports = {}
    for pair in pairs:
        start = time.time()
        b = _builder_cls(source)(config=pair, data_dir=data_dir, source_options=source_options, workers=workers)
        reused = b.is_prepared()
        if source == "m4" and not reused:  # a wrong manual_dir fails here, before TFDS starts
            from molbind_data.sources import m4_layout

            m4_layout.check_layout(m4_layout.dataset_root(
                manual_dir or os.path.join(data_dir, "downloads", "manual")), pair)
        b.download_and_prepare(download_config=download_config)
        report = b.read_report() or {}
        reports[pair] = report
        if verbose:
            state = "reused" if reused else f"built in {time.time() - start:.0f}s"
            splits = ", ".join(f"{s} {r['written']}" for s, r in sorted(report.get("splits", {}).items()))
            skipped = report.get("skipped") or {}
            print(f"{b.name}/{pair} ({state}): read {report.get('read')}, written {report.get('written')} "
                  f"[{splits}], skipped {sum(skipped.values())} {skipped or ''}\n  -> {b.data_dir}\n"
                  f"  report: {b.report_path()}", flush=True)
    return reports


def ensure_built(dataset: str = "molbind_mini", data_dir: str | None = None) -> str:
    """Build `dataset` (every pair type its source provides) into data_dir if missing; returns
    the data_dir.

    Used by training on first use; a complete build is detected and reused.
    """
    source = {v: k for k, v in DATASETS.items()}.get(dataset)
    if source is None:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS.values())}")
    if source == "pairs":
        raise ValueError("molbind_pairs needs a user file: use `python -m molbind_data.build --source=pairs`")
    data_dir = default_data_dir(data_dir)
    version = str(_builder_cls(source).VERSION)
    missing = [p for p in provided_pairs(source)
               if not os.path.exists(os.path.join(data_dir, dataset, p, version, "dataset_info.json"))]
    if missing:
        build(source, data_dir, missing, verbose=True)
    return data_dir


def main(argv):
    from absl import flags

    f = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    options = {"pocket_split": f.pocket_split} if f.pocket_split else None
    if options and f.source != "mini":
        raise ValueError("--pocket_split applies to --source=mini only")
    from molbind_data.sources.m4_layout import LayoutError

    try:
        report = build(f.source, f.data_dir, f.pair, input_path=f.input, manual_dir=f.manual_dir,
                       workers=f.workers, max_records=f.max_records, options=options)
    except LayoutError as err:  # the message is the whole story (the tree); no traceback
        sys.exit(f"error: {err}")
    print(json.dumps({p: {k: r.get(k) for k in ("read", "written", "skipped", "wall_seconds")}
                      for p, r in report.items()}, indent=1))


def _define_flags():
    from absl import flags

    flags.DEFINE_enum("source", "mini", sorted(DATASETS), "Which data: mini (embedded), m4, pairs (user file).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
    flags.DEFINE_string("pair", None, "One stored pair type of data_pipeline/schema.py (default: every one the "
                        "source provides; required for pairs).")
    flags.DEFINE_string("input", None, "The user pair file (--source=pairs).")
    flags.DEFINE_string("manual_dir", None, "The MolBind-M4 release (--source=m4): the folder holding 2D-Text/, "
                        "3D-Text/, 3D-2D/, 3D-Protein/ (each with pretrain/, valid/, test/), or its parent "
                        "holding MolBind4M/. Default: <data_dir>/downloads/manual.")
    flags.DEFINE_integer("workers", None, "Featurization processes (default: all cores; 0 or 1 = in process).")
    flags.DEFINE_integer("max_records", None, "Cap on raw records per pair type (default: the source's caps).")
    flags.DEFINE_enum("pocket_split", None, ["scaffold", "target"],
                      "mini conformer_pocket split: ligands by scaffold (default) or whole targets held out.")


def cli():
    """The `molbind-build` console script (pyproject.toml); `python -m` runs the same."""
    from absl import app

    _define_flags()
    app.run(main)
    sys.exit(0)


if __name__ == "__main__":
    cli()
