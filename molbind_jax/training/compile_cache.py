"""JAX's persistent compilation cache for the launchers: a re-run does not recompile.

`enable(setting)` points JAX's persistent compilation cache (`jax_compilation_cache_dir`) at a
directory, so that the programs a run compiles (the per-pair gradient programs, the gradient
add, the update, evaluation) are written there and read back by the next process that builds
the same program on the same backend, jaxlib and flags: a resumed or repeated run skips the
first-step compile. `setting` is the launchers' `--compile_cache` flag (or, when the flag is
not given, the environment variable MOLBIND_JAX_COMPILE_CACHE):

  "auto" (default)  JAX's own cache directory when one is set (JAX_COMPILATION_CACHE_DIR),
                    else $XDG_CACHE_HOME/molbind_jax/jax_cache (~/.cache/molbind_jax/jax_cache)
  "off"             no persistent cache (JAX's default)
  any other value   that directory (created if missing)

Every program is cached, whatever its compile time or size (JAX's defaults skip programs that
compile in under a second, which on CPU are most of the step's dozens of programs). JAX keys an
entry by the program's HLO, the devices, the compile options and the jax/jaxlib versions, so a
stale entry is never used; the directory may be deleted at any time (JAX does not bound its
size unless `jax_compilation_cache_max_size` is set).

`CacheCounter` counts JAX's cache events (monitoring listeners), so a launcher can say whether
a compile was served from the cache.
"""
from __future__ import annotations

import os
import threading

ENV = "MOLBIND_JAX_COMPILE_CACHE"

_HIT = "/jax/compilation_cache/cache_hits"
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_WRITE = "/jax/compilation_cache/cache_misses"  # recorded when an entry is written


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "molbind_jax", "jax_cache")


def resolve(setting: str | None) -> str | None:
    """The cache directory of a `--compile_cache` value (None: the environment, then "auto"),
    or None when the cache is off."""
    if setting is None or setting == "":
        setting = os.environ.get(ENV, "") or "auto"
    setting = str(setting).strip()
    if setting.lower() == "off":
        return None
    if setting.lower() == "auto":
        import jax

        return jax.config.jax_compilation_cache_dir or default_dir()
    return os.path.abspath(os.path.expanduser(setting))


def enable(setting: str | None = "auto") -> str | None:
    """Turns JAX's persistent compilation cache on at the directory `setting` resolves to (see
    the module docstring) and returns it, or None when off. Call before the first compile."""
    import jax

    path = resolve(setting)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--compile_cache={setting!r}: cannot create the cache directory {path} ({e}); "
                         "pass another directory or off") from None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:  # a compile before this call fixes JAX's "cache used" decision for the process: redo it
        from jax.experimental.compilation_cache import compilation_cache as cc

        cc.reset_cache()
    except Exception:  # noqa: BLE001 - an older or newer JAX without it: the first compile decides
        pass
    return path


class CacheCounter:
    """Counts the persistent cache's events from its creation on: `snapshot()` gives
    (requests, hits, writes); programs compiled = requests - hits."""

    _lock = threading.Lock()
    _counts = {_HIT: 0, _REQUEST: 0, _WRITE: 0}
    _registered = False

    def __init__(self) -> None:
        cls = type(self)
        with cls._lock:
            if not cls._registered:
                import jax

                jax.monitoring.register_event_listener(cls._on_event)
                cls._registered = True
        self._start = self._now()

    @classmethod
    def _on_event(cls, event: str, **_) -> None:
        if event in cls._counts:
            with cls._lock:
                cls._counts[event] += 1

    @classmethod
    def _now(cls) -> tuple[int, int, int]:
        with cls._lock:
            return cls._counts[_REQUEST], cls._counts[_HIT], cls._counts[_WRITE]

    def snapshot(self) -> dict[str, int]:
        """{"requests", "hits", "compiled", "written"} since this counter was made."""
        now = self._now()
        requests, hits, writes = (a - b for a, b in zip(now, self._start))
        return {"requests": requests, "hits": hits, "compiled": requests - hits, "written": writes}

    def describe(self, since: dict[str, int] | None = None) -> str:
        """"3 programs from the compilation cache, 1 compiled" (counts since `since`, a former
        snapshot, or since the counter was made); "" when no program went through the cache."""
        s = self.snapshot()
        if since:
            s = {k: s[k] - since.get(k, 0) for k in s}
        if s["requests"] <= 0:
            return ""
        return (f"{s['hits']} program{'s' if s['hits'] != 1 else ''} from the compilation cache, "
                f"{s['compiled']} compiled")
