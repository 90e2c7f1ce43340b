"""Build MolBind pair datasets (TFDS shards) and print their build reports.

    python -m molbind_data.build --source=mini --data_dir=data/tfds
    python -m molbind_data.build --source=mini --pair=graph_text --max_records=200 --workers=2
    python -m molbind_data.build --source=m4 --manual_dir=/data/MolBind4M --data_dir=DIR
    python -m molbind_data.build --source=pairs --input=my_pairs.csv --pair=graph_text --data_dir=DIR

All four pair types are built by default (mini, m4); `pairs` needs --pair. The m4 manual
directory must have the release's layout (data_pipeline/sources/m4_layout.py); a missing or
misplaced folder stops the build with the expected tree. A finished
(dataset, config) is reused, so an interrupted build resumes at the first unfinished pair type.
The build ends with the leakage audit of every pair type of the dataset in data_dir
(molbind_data/leakage: validation/test molecules, scaffolds, texts and proteins also in
training, nearest-neighbour Tanimoto), printed and written under `leakage` in each
build_report.json; --noleakage skips it.
`resolve_data_dir()` is what training and evaluation call to find a dataset: it builds
molbind_mini on first use (`ensure_built`) and names the build command for a dataset that
needs the user's input (molbind_pairs, molbind_m4).

Mistakes (a missing or directory --input, a pairs header without the needed columns, an
unknown pair type, other options in a finished data_dir) print one line `error: ...` on
stderr with exit status 2 (molbind_data/cli.py).
"""
from __future__ import annotations

import json
import os
import sys
import time

from molbind_data.cli import InputError

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
          options: dict | None = None, verbose: bool = True, leakage: bool = True) -> dict[str, dict]:
    """Build (or reuse) the pair types of one source; returns {pair: build report}.

    With `leakage`, the build ends with the leakage audit of every pair type of the dataset
    built in data_dir (`audit_leakage`), written under `leakage` in their reports."""
    if source not in DATASETS:
        raise InputError(f"unknown source {source!r}; expected one of {sorted(DATASETS)}")
    provided = provided_pairs(source)
    if pairs is None:
        if source == "pairs":
            raise InputError(f"--source=pairs needs --pair, the pair type stored in --input: one of {provided}")
        pairs = provided
    pairs = [pairs] if isinstance(pairs, str) else list(pairs)
    source_options = dict(options or {})
    if input_path:
        source_options["input"] = input_path
    if max_records is not None:
        source_options["max_records"] = int(max_records)
    for pair in pairs:  # every name is checked before anything is built (a build can take hours)
        if pair not in provided:
            from molbind_data import schema

            try:
                stored = schema.pair_type(pair).stored_as
            except ValueError as err:  # unknown names list the known ones
                raise InputError(str(err)) from None
            raise InputError(f"the {source} source does not provide {pair!r}"
                             + (f" (a view of {stored}: build {stored})" if stored != pair else "")
                             + f"; it provides {provided}")
    if source == "pairs":  # a wrong path or header is refused before anything is written
        from molbind_data.sources import pairs as pairs_source

        for pair in pairs:
            pairs_source.check_columns(source_options.get("input"), pair)
    import tensorflow_datasets as tfds  # after the checks: a mistake is reported without TF's start-up

    data_dir = default_data_dir(data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    reports, report_paths = {}, {}
    rebuilt = False
    for pair in pairs:
        start = time.time()
        b = _builder_cls(source)(config=pair, data_dir=data_dir, source_options=source_options, workers=workers)
        reused = b.is_prepared()
        if source == "m4" and not reused:  # a wrong manual_dir fails here, before TFDS starts
            from molbind_data.sources import m4_layout

            m4_layout.check_layout(m4_layout.dataset_root(
                manual_dir or os.path.join(data_dir, "downloads", "manual")), pair)
        b.download_and_prepare(download_config=download_config)
        rebuilt = rebuilt or not reused
        report = b.read_report() or {}
        reports[pair], report_paths[pair] = report, b.report_path()
        if verbose:
            state = "reused" if reused else f"built in {time.time() - start:.0f}s"
            splits = ", ".join(f"{s} {r['written']}" for s, r in sorted(report.get("splits", {}).items()))
            skipped = report.get("skipped") or {}
            empty = "".join(f"\n  split {s} left out: {why}" for s, why in sorted((report.get("empty_splits") or {}).items()))
            print(f"{b.name}/{pair} ({state}): read {report.get('read')}, written {report.get('written')} "
                  f"[{splits}], skipped {sum(skipped.values())} {skipped or ''}{empty}\n  -> {b.data_dir}\n"
                  f"  report: {b.report_path()}", flush=True)
    if leakage:
        if audit_leakage(DATASETS[source], data_dir, rebuilt=rebuilt, verbose=verbose):
            for pair, path in report_paths.items():  # the reports as written, with their `leakage`
                if os.path.exists(path):
                    with open(path) as f:
                        reports[pair] = json.load(f)
    return reports


def audit_leakage(dataset: str, data_dir: str, *, rebuilt: bool = True, verbose: bool = True) -> dict[str, dict]:
    """The leakage audit (molbind_data.leakage) of every built pair type of `dataset`, written
    into their build reports and printed; returns {pair: section}.

    A build that changed nothing (every pair type reused, every report already audited
    against the same pair types) keeps the sections it has. A failing audit is reported and
    leaves the built data as it is (the data is fine; only the audit is missing)."""
    from molbind_data.leakage import built

    try:
        versions = built.built_versions(dataset, data_dir)
        stored = {}
        for pair, directory in versions.items():
            path = os.path.join(directory, built.REPORT)
            if os.path.exists(path):
                with open(path) as f:
                    stored[pair] = json.load(f).get("leakage")
        current = not rebuilt and all((stored.get(p) or {}).get("against") == sorted(versions) for p in versions)
        if current:
            result = {"dataset": dataset, "sections": stored,
                      "seconds": max((s.get("seconds", 0) for s in stored.values()), default=0)}
        else:
            result = built.audit_dataset(dataset, data_dir)
    except Exception as err:  # noqa: BLE001 - the built data stands; say what failed
        print(f"warning: the leakage audit of {dataset} in {data_dir} failed ({type(err).__name__}: {err}); "
              f"run `python -m molbind_data.leakage --dataset={dataset} --data_dir={data_dir}`", file=sys.stderr)
        return {}
    if verbose:
        print(built.summary(result) + ("\n  (reused: no pair type was rebuilt)" if current else ""), flush=True)
    return result["sections"]


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


BUILD_COMMANDS = {
    "molbind_mini": "python -m molbind_data.build --source=mini --data_dir={data_dir}",
    "molbind_m4": "python -m molbind_data.build --source=m4 --manual_dir=MOLBIND4M_DIR --data_dir={data_dir}",
    "molbind_pairs": "python -m molbind_data.build --source=pairs --input=YOUR_PAIRS.csv --pair={pair} "
                     "--data_dir={data_dir}",
}


def built_pairs(dataset: str, data_dir: str) -> list[str]:
    """The configs (stored pair types) of `dataset` finished in data_dir, any version."""
    root = os.path.join(data_dir, dataset)
    if not os.path.isdir(root):
        return []
    return sorted(p for p in os.listdir(root) if os.path.isdir(os.path.join(root, p)) and any(
        os.path.exists(os.path.join(root, p, v, "dataset_info.json")) for v in os.listdir(os.path.join(root, p))))


def resolve_data_dir(dataset: str, data_dir: str | None = None, pairs=None, *, build_if_missing: bool = True,
                     data_dir_flag: str = "--data_dir") -> str:
    """The data_dir that holds `dataset`: the one given, else $TFDS_DATA_DIR, else TFDS's default.

    The one rule of training and evaluation. molbind_mini, which needs no input from the user,
    is built there if it is missing (unless build_if_missing is False). molbind_pairs and
    molbind_m4 are built by the user: when their pair types `pairs` (default: any one) are not
    in data_dir, InputError names the data_dir, `data_dir_flag` (the caller's flag that sets
    it) and the build command. Other datasets are left to TFDS.
    """
    from molbind_data import schema

    data_dir = os.path.abspath(default_data_dir(data_dir or None))  # a run's config.json outlives its cwd
    if dataset == "molbind_mini" and build_if_missing:
        return ensure_built(dataset, data_dir)
    if dataset not in BUILD_COMMANDS:
        return data_dir
    needed = sorted({schema.pair_type(p).stored_as for p in pairs or ()})
    have = built_pairs(dataset, data_dir)
    missing = [p for p in needed if p not in have] if needed else ([] if have else ["any pair type"])
    if missing:
        command = BUILD_COMMANDS[dataset].format(data_dir=data_dir, pair=missing[0] if needed else "PAIR")
        raise InputError(f"{dataset} has no {', '.join(missing)} in data_dir {data_dir}"
                         + (f" (built there: {', '.join(have)})" if have else "")
                         + f"; build it with `{command}` (once per pair type), or point {data_dir_flag} "
                         "at the data_dir you built it into")
    return data_dir


def resolve_run_data(workdir: str | None, dataset: str | None = None, data_dir: str | None = None,
                     pairs=()) -> tuple[str, str, tuple[str, ...]]:
    """(dataset, data_dir, pairs) to evaluate a training run on: the ones given, else what the
    run in `workdir` used (its config.json, written by molbind_jax.training.train: the dataset,
    the data_dir train resolved and, for a dataset other than molbind_mini, the pairs it
    trained), else molbind_mini in $TFDS_DATA_DIR or TFDS's default. The data_dir is then
    checked by resolve_data_dir, the rule train uses (an error names --data_dir)."""
    saved: dict = {}
    config_path = os.path.join(workdir, "config.json") if workdir else ""
    if config_path and os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            saved = json.load(f).get("train", {})
    saved_data = saved.get("data") or {}
    same = saved_data.get("source") == "tfds" and dataset in (None, saved_data.get("dataset"))
    dataset = dataset or (saved_data.get("dataset") if same else None) or "molbind_mini"
    data_dir = data_dir or (saved_data.get("data_dir") if same else None) or None
    pairs = tuple(pairs or ())
    if not pairs and same and dataset != "molbind_mini":  # a user's build holds the trained pairs only
        pairs = tuple(saved.get("pairs") or ())
    return dataset, resolve_data_dir(dataset, data_dir, pairs, data_dir_flag="--data_dir"), pairs


def main(argv):
    from absl import flags

    f = flags.FLAGS
    if f.verbosity < 0:
        # TensorFlow 2.21 prints a oneDNN notice at its first op whatever TF_CPP_MIN_LOG_LEVEL
        # says; a build runs no float math in TensorFlow (it only writes examples), so oneDNN's
        # custom ops are switched off, and the notice with them.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if len(argv) > 1:
        raise InputError(f"unexpected arguments {argv[1:]}")
    options = {"pocket_split": f.pocket_split} if f.pocket_split else None
    if options and f.source != "mini":
        raise InputError("--pocket_split applies to --source=mini only")
    from molbind_data.sources.m4_layout import LayoutError

    try:
        report = build(f.source, f.data_dir, f.pair, input_path=f.input, manual_dir=f.manual_dir,
                       workers=f.workers, max_records=f.max_records, options=options, leakage=f.leakage)
    except LayoutError as err:  # the message is the whole story (the tree, several lines)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({p: {k: r.get(k) for k in ("read", "written", "skipped", "empty_splits", "wall_seconds")}
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
    flags.DEFINE_bool("leakage", True, "End the build with the leakage audit of every pair type built in data_dir "
                      "(test/validation molecules, scaffolds, texts, proteins also in training; nearest-neighbour "
                      "Tanimoto), written under `leakage` in each build_report.json; --noleakage skips it.")


def cli():
    """The `molbind-build` console script (pyproject.toml); `python -m` runs the same."""
    from molbind_data.cli import run

    # TensorFlow prints C++ start-up lines (oneDNN, CPU features) when it is imported: nothing
    # here imports it before main, and the wrapper sets TF_CPP_MIN_LOG_LEVEL first.
    _define_flags()
    run(main)
    sys.exit(0)


if __name__ == "__main__":
    cli()
