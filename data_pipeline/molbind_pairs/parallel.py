"""Parallel featurization for the builders: raw records -> stored examples, skips counted.

This module imports no TensorFlow, so spawned worker processes start quickly: each worker only
imports the source module (`molbind_data.sources.<name>` or any dotted path) and calls its
`featurize(pair, raw, options)`. The parent keeps the order of the raw records (ordered,
chunked `imap`), counts every outcome in a `BuildStats` and never lets one bad record stop
the build: `SkipRecord` is counted under its reason, any other exception under
`error:<ExceptionType>` (the first few are logged with their detail).

Workers are spawned, not forked: the parent has TensorFlow loaded, and forking a process
that owns TF's thread pools can deadlock the children.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
from typing import Iterable, Iterator

from molbind_data import featurize as fz
from molbind_data.build_report import BuildStats

SOURCES = {
    "mini": "molbind_data.sources.mini",
    "m4": "molbind_data.sources.m4",
    "pairs": "molbind_data.sources.pairs",
}
_LOGGED_ERRORS = 5


def source_module(name: str):
    """A source by short name (mini, m4, pairs) or dotted module path."""
    return importlib.import_module(SOURCES.get(name, name))


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def featurize_one(task):
    """Worker body: (source, pair, options, key, raw) -> (key, example | None, reason, detail)."""
    source, pair, options, key, raw = task
    try:
        example = source_module(source).featurize(pair, raw, options)
    except fz.SkipRecord as e:
        return key, None, e.reason, e.detail
    except Exception as e:  # a bad record must never stop the build; counted and reported
        return key, None, f"error:{type(e).__name__}", str(e)[:300]
    return key, example, None, None


def featurized(source: str, pair: str, options: dict, records: Iterable[tuple[str, dict]],
               stats: BuildStats, *, workers: int | None = None, chunksize: int = 16,
               desc: str = "", seen: set[str] | None = None, progress: bool = True) -> Iterator[tuple[str, dict]]:
    """Yield (key, example) for every raw record that featurizes; count the rest in stats.

    workers <= 1 runs in this process (tests, tiny builds); otherwise a spawned Pool. In
    process, records are read one at a time, so a caller may stop after any example and go
    on with the same `records` iterator, `stats` and `seen` (the keys written so far).
    """
    workers = default_workers() if workers is None else int(workers)
    tasks = ((source, pair, options, key, raw) for key, raw in records)
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(featurize_one, tasks, chunksize=chunksize)
    else:
        results = map(featurize_one, tasks)
    from tqdm.auto import tqdm

    seen = set() if seen is None else seen
    errors = 0
    try:
        for key, example, reason, detail in tqdm(results, desc=desc or pair, unit="rec", mininterval=2.0,
                                                    disable=not progress):
            stats.read += 1
            if example is None:
                stats.skip(reason)
                if reason.startswith("error:") and errors < _LOGGED_ERRORS:
                    errors += 1
                    logging.warning("record %s failed (%s): %s", key, reason, detail)
                continue
            # TFDS hashes keys after rewriting "\\" to "/", so compare them the same way.
            tfds_key = key.replace("\\", "/")
            if tfds_key in seen:
                stats.skip(fz.DUPLICATE)
                continue
            seen.add(tfds_key)
            stats.written += 1
            yield key, {"id": key, **example}
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
