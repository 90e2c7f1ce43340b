"""The text cache in a training run: when it is on, and the cache of a run's data and tower.

`enabled(config)` reads `text_cache` ("off" | "on" | "auto"); `for_training` builds or loads
the cache of the trained text pairs' stored configs (every split) for the run's text tower;
`records_for` gives the input pipeline the records that carry their cached vectors. The cache
itself (fingerprint, files, checks) is text_cache.py; docs/training.md describes both.
"""
from __future__ import annotations

import logging
import os
import time

from molbind_data import schema
from molbind_jax.modalities.text import MAX_TEXT_LEN
from molbind_jax.training.text_cache import (TextCacheError, TextFeatureCache, encoder_forward, ensure, fingerprint,
                                             load, tokenizer_digest, tower_description, weights_digest)

log = logging.getLogger("molbind_jax.training.text_cache")

SPLITS = ("train", "validation", "test")
MODES = ("off", "on", "auto")


# ----------------------------------------------------------------------------- config

def text_pairs(config) -> list[str]:
    """The trained pair types with a text side."""
    return [p for p in config.pairs if "text" in schema.pair_type(p).modalities]


def mode(config) -> str:
    value = config.get("text_cache", "off")
    value = {True: "on", False: "off", None: "off"}.get(value, value)
    value = str(value).lower()
    if value not in MODES:
        raise ValueError(f"text_cache={value!r}; expected one of {MODES}")
    return value


def enabled(config) -> bool:
    """Whether the run trains from cached text features (`text_cache`: "on" needs a frozen
    text tower and TFDS data, "auto" is on exactly then)."""
    m = mode(config)
    if m == "off" or not text_pairs(config):
        return False
    frozen = "text_encoder" in tuple(config.frozen)
    tfds = config.data.source == "tfds"
    if m == "auto":
        return frozen and tfds
    if not frozen:
        raise ValueError("text_cache='on' needs a locked text tower (config.frozen holding 'text_encoder'): "
                         "a trained tower's output changes every step")
    if not tfds:
        raise ValueError(f"text_cache='on' needs data.source='tfds' (got {config.data.source!r})")
    return True


# ----------------------------------------------------------------------------- a training run

def default_root(config) -> str:
    """`text_cache_dir`, else `<data_dir>/text_cache` (data_dir: the resolved TFDS directory)."""
    root = str(config.get("text_cache_dir", "") or "")
    if root:
        return root
    import tensorflow_datasets as tfds

    data_dir = config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
    return os.path.join(os.path.expanduser(str(data_dir)), "text_cache")


def tfds_sources(config) -> tuple[dict, dict]:
    """({"<stored config>/<split>": records}, dataset fingerprint part) of the trained text pairs."""
    import tensorflow_datasets as tfds

    from molbind_jax.data import pipeline

    sources, part = {}, {"name": config.data.dataset, "configs": {}}
    for pair in text_pairs(config):
        stored = schema.pair_type(pair).stored_as
        if stored in part["configs"]:
            continue
        info = tfds.builder(f"{config.data.dataset}/{stored}", data_dir=config.data.data_dir or None).info
        splits = {s: int(info.splits[s].num_examples) for s in SPLITS if s in info.splits}
        part["configs"][stored] = {"version": str(info.version), "splits": splits}
        for split in splits:
            sources[f"{stored}/{split}"] = pipeline.load_records(pair, split, dataset=config.data.dataset,
                                                                 data_dir=config.data.data_dir or None)
    return sources, part


def for_training(config, model, text_dir: str) -> TextFeatureCache:
    """The cache of this run's data and text tower (`model` holds the weights it trains with),
    built on first use."""
    sources, dataset = tfds_sources(config)
    tower = model.config.tower("text")
    fp, parts = fingerprint(dataset=dataset, tokenizer=tokenizer_digest(text_dir),
                            weights=weights_digest(model.text_encoder),
                            tower={**tower_description(tower), "model_dtype": model.config.dtype},
                            max_tokens=min(MAX_TEXT_LEN, tower.max_position_embeddings))
    directory = os.path.join(default_root(config), config.data.dataset, fp[:16])
    import jax

    if jax.process_count() > 1:
        try:
            return load(directory, fp)
        except TextCacheError as e:
            raise TextCacheError(f"{e}. With several processes build the cache first with one process "
                                 "(run the same config on one host for one step, or set text_cache='off')") from e
    t0 = time.time()
    cache = ensure(directory, fp, parts, sources, encoder_forward(model),
                   rebuild=bool(config.get("text_cache_rebuild", False)))
    log.info("text cache %s: %d texts x %d in %.1f s", directory, *cache.features.shape, time.time() - t0)
    cache.sources = sources  # read once (a tfrecord build is read into memory)
    return cache


def records_for(cache: TextFeatureCache | None, config, split: str, pairs=None) -> dict | None:
    """{pair: records carrying their cached text vectors} of the text pairs among `pairs`
    (None without a cache): the `records` argument of the input pipeline."""
    if cache is None:
        return None
    from molbind_jax.data import pipeline

    out = {}
    for pair in pairs or config.pairs:
        if "text" not in schema.pair_type(pair).modalities:
            continue
        source = f"{schema.pair_type(pair).stored_as}/{split}"
        base = cache.sources.get(source)
        if base is None:
            base = pipeline.load_records(pair, split, dataset=config.data.dataset,
                                         data_dir=config.data.data_dir or None)
        out[pair] = cache.records(source, base)
    return out
