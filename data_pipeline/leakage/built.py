"""The leakage audit of a built dataset: read the stored records back (only their `smiles`,
`text` and `target` fields), audit them (audit.py) and write each pair type's section into its
build_report.json under `leakage`.

Reading back what was written, rather than collecting keys during generation, makes a resumed
build (some pair types reused from an earlier run) and an existing build audited the same way.
"""
from __future__ import annotations

import json
import logging
import os
import time

from molbind_data.leakage import audit as audit_mod

FIELDS = ("smiles", "text", "target")
REPORT = "build_report.json"


def built_versions(dataset: str, data_dir: str) -> dict[str, str]:
    """{pair: directory of its newest finished version} of `dataset` in data_dir."""
    # Absolute: TFDS names a relative build's shard files relative to the working directory,
    # which a join with the builder's (relative) data_dir would repeat.
    root = os.path.join(os.path.abspath(data_dir), dataset)
    out = {}
    if not os.path.isdir(root):
        return out
    import tensorflow_datasets as tfds  # after the check: a wrong data_dir is told without TF's start-up

    for pair in sorted(os.listdir(root)):
        pdir = os.path.join(root, pair)
        if not os.path.isdir(pdir):
            continue
        versions = [v for v in os.listdir(pdir) if os.path.exists(os.path.join(pdir, v, "dataset_info.json"))]
        good = []
        for v in versions:
            try:
                good.append((tfds.core.Version(v), v))
            except ValueError:
                continue
        if good:
            out[pair] = os.path.join(pdir, max(good)[1])
    return out


def read_fields(directory: str) -> dict[str, list[dict]]:
    """{split: [{field: str}]} of a built config: only the fields of FIELDS it stores.

    TFRecord shards are parsed for those fields alone (a TFDS Text feature is one bytes
    feature of its name), 30x faster than decoding through TFDS; another file format, or a
    shard that does not parse so, is read through TFDS (`as_dataset`, partial decoding)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(directory)
    fields = [f for f in FIELDS if f in builder.info.features]
    fmt = getattr(builder.info, "file_format", None)
    out = {}
    for split in builder.info.splits:
        if str(getattr(fmt, "value", fmt)) == "tfrecord":
            try:
                out[split] = _parse_tfrecords(builder, split, fields)
                continue
            except Exception as err:  # noqa: BLE001 - read it the slower, general way
                logging.getLogger(__name__).info("%s/%s: reading through TFDS (%s)", directory, split, err)
        out[split] = _read_tfds(builder, split, fields)
    return out


def _parse_tfrecords(builder, split: str, fields: list[str]) -> list[dict]:
    import tensorflow as tf

    files = [fi.filename for fi in builder.info.splits[split].file_instructions]
    files = [f if os.path.isabs(f) else os.path.join(os.fspath(builder.data_dir), f) for f in files]
    spec = {f: tf.io.FixedLenFeature([], tf.string) for f in fields}
    ds = tf.data.TFRecordDataset(files, buffer_size=8 << 20).batch(4096).map(lambda x: tf.io.parse_example(x, spec))
    rows = []
    for batch in ds.as_numpy_iterator():
        columns = [[v.decode("utf-8", errors="replace") for v in batch[f]] for f in fields]
        rows.extend(dict(zip(fields, values)) for values in zip(*columns))
    expected = builder.info.splits[split].num_examples
    if len(rows) != expected:
        raise ValueError(f"parsed {len(rows)} records, the dataset info says {expected}")
    return rows


def _read_tfds(builder, split: str, fields: list[str]) -> list[dict]:
    import tensorflow_datasets as tfds

    # PartialDecoding reads a deprecated attribute of every feature, and TFDS logs a warning
    # for each through absl: nothing the user can act on, so it is held back while reading.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(max(level, logging.ERROR))
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False,
                                decoders=tfds.decode.PartialDecoding({f: True for f in fields}))
        return [{f: r[f].decode("utf-8", errors="replace") for f in fields} for r in tfds.as_numpy(ds.prefetch(1024))]
    finally:
        absl_logger.setLevel(level)


def audit_dataset(dataset: str, data_dir: str, *, pairs=None, write: bool = True, **options) -> dict:
    """Audit every built pair type of `dataset` in data_dir (training = the train splits of all
    of them); `pairs` limits which sections are written (all are read). Returns
    {"dataset", "data_dir", "seconds", "sections": {pair: section}}."""
    start = time.time()
    versions = built_versions(dataset, data_dir)
    records = {pair: read_fields(directory) for pair, directory in versions.items()}
    read_seconds = time.time() - start
    sections = audit_mod.audit(records, **options)
    seconds = round(time.time() - start, 1)
    for section in sections.values():
        section["seconds"] = seconds
        section["read_seconds"] = round(read_seconds, 1)
    if write:
        for pair, section in sections.items():
            if pairs is None or pair in pairs:
                write_section(versions[pair], section)
    return {"dataset": dataset, "data_dir": data_dir, "seconds": seconds, "sections": sections}


def write_section(directory: str, section: dict) -> str:
    """Put `section` under `leakage` in the build_report.json of `directory` (created when
    missing); the rest of the report is kept."""
    path = os.path.join(directory, REPORT)
    report = {}
    if os.path.exists(path):
        with open(path) as f:
            report = json.load(f)
    report["leakage"] = section
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def summary(result: dict) -> str:
    sections = result["sections"]
    against = sorted(sections)
    head = (f"leakage audit of {result['dataset']} ({result['seconds']:.1f} s; training = the train splits of "
            f"{', '.join(against) or 'nothing'}):")
    return "\n".join([head] + audit_mod.summary_lines(sections))
