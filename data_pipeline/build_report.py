"""Build statistics: records read, written and skipped by reason (the build report)."""
from __future__ import annotations

import collections
import dataclasses
import json
import os


@dataclasses.dataclass
class BuildStats:
    read: int = 0
    written: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def merge(self, other: "BuildStats") -> None:
        self.read += other.read
        self.written += other.written
        self.skipped.update(other.skipped)

    def as_dict(self) -> dict:
        return {"read": self.read, "written": self.written, "skipped": dict(sorted(self.skipped.items()))}

    def write(self, directory: str, **extra) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "build_report.json")
        with open(path, "w") as f:
            json.dump({**self.as_dict(), **extra}, f, indent=2, sort_keys=True)
        return path

    def __str__(self) -> str:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"read {self.read}, written {self.written}, skipped {sum(self.skipped.values())} ({skipped})"
