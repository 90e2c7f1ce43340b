"""Scalar logging for training: `metrics.jsonl` and TensorBoard event files.

`metrics.jsonl` holds one JSON object per logged step (`step`, `loss`, per-pair losses,
learning rate, temperatures, throughput); evaluation records carry `"eval": true` and
`r1/<pair>` keys. Only process 0 writes, so multi-host runs produce one file. When a run
resumes from step s, records after s (written by the killed run past its last checkpoint) are
dropped so the file reads as one consistent run.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np


def _plain(v: Any) -> Any:
    """A JSON-able Python value: device/numpy scalars become bool/int/float; a non-finite
    float becomes its string ("nan", "inf") so the file stays strict JSON."""
    if isinstance(v, (str, bool, int)) or v is None:
        return v
    a = np.asarray(v)
    if a.ndim:
        return a.tolist()
    if a.dtype == np.bool_:
        return bool(a)
    if np.issubdtype(a.dtype, np.integer):
        return int(a)
    f = float(a)
    return f if math.isfinite(f) else str(f)


class MetricWriter:
    """Writes scalar records to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard`."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            import tensorflow as tf  # lazy: TF is heavy and only needed for the event files

            tf.config.set_visible_devices([], "GPU")  # TF must not take accelerator memory
            from tensorflow.core.framework import summary_pb2

            self._tf = tf
            # tf.summary.scalar needs the `tensorboard` package, which is not installed; the
            # core `tf.summary.write` with the scalars plugin's metadata writes the same events.
            self._scalar_meta = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by a kill
                if int(rec.get("step", 0)) <= step:
                    kept.append(json.dumps(rec))
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: Mapping[str, Any], **extra: Any) -> dict:
        """Writes one record; returns it (plain Python values)."""
        rec = {"step": int(step)}
        rec.update({k: _plain(v) for k, v in extra.items()})
        rec.update({k: _plain(v) for k, v in scalars.items()})
        if not self.active:
            return rec
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = "eval/" if extra.get("eval") else ""
            with self._tb.as_default(step=int(step)):
                for k, v in rec.items():
                    if k in ("step", "eval") or not isinstance(v, (int, float)) or isinstance(v, bool):
                        continue
                    self._tf.summary.write(prefix + k, self._tf.constant(float(v), self._tf.float32),
                                           metadata=self._scalar_meta)
            self._tb.flush()
        return rec

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of `<workdir>/metrics.jsonl` (for tests and reports)."""
    path = os.path.join(workdir, "metrics.jsonl")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
