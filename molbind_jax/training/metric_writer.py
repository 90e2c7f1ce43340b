"""Scalar logging for training: `metrics.jsonl` and TensorBoard event files.

`metrics.jsonl` holds one JSON object per logged step (`step`, `loss`, per-pair losses,
learning rate, temperatures, throughput); evaluation records carry `"eval": true` and
`r1/<pair>` keys. Only process 0 writes, so multi-host runs produce one file. When a run
resumes from step s, records after s (written by the killed run past its last checkpoint) are
dropped so the file reads as one consistent run.

TensorBoard (`<workdir>/tensorboard`, the `tensorboard` extra): every float metric is a scalar
summary (`simple_value`), which TensorBoard's scalar dashboard and its
`EventAccumulator(...).Scalars(tag)` read; evaluation metrics are tagged `eval/<name>`. Counts
(integer metrics: examples per evaluation, skipped records) and flags are left to
metrics.jsonl. Without the package installed, a warning says so and only metrics.jsonl is
written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
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
            try:  # lazy: only runs that log to TensorBoard need the package
                from tensorboard.compat.proto import event_pb2, summary_pb2
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
            except ImportError:
                logging.getLogger(__name__).warning(
                    "tensorboard is not installed (pip install 'molbind-jax[tensorboard]'): "
                    "writing metrics.jsonl only")
            else:
                self._event, self._summary = event_pb2.Event, summary_pb2.Summary
                self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))
                if resume_step:  # TensorBoard drops the killed run's events past the resumed step
                    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(resume_step) + 1,
                                                       session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

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
            values = [self._summary.Value(tag=prefix + k, simple_value=v) for k, v in rec.items()
                      if isinstance(v, float) and k not in ("step", "eval")]  # counts stay in the JSON
            if values:
                self._tb.add_event(self._event(wall_time=time.time(), step=int(step),
                                               summary=self._summary(value=values)))
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
