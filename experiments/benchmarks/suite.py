"""The performance suite in one command: towers, the whole step, memory at scale, and a profile.

    taskset -c 0 .venv/bin/python experiments/benchmarks/suite.py --output=runs/bench/suite.json

Parts (each also runs alone, with its own flags):
  * `gemm`    the machine's 2048^3 float32 matmul peak, JAX and torch (breakdown.gemm_peak);
  * `towers`  each tower's train-mode forward + backward, ours against the PyTorch anchors users
              run (transformers BertModel with SDPA, torch_geometric GIN, unimol_tools' Uni-Mol),
              eager and under torch.compile, interleaved (towers.py, anchors.py);
  * `step`    the whole MolBind train step, four pairs, loss and AdamW update (step.py);
  * `scale`   the chunked contrastive loss at global batch 65,536 over 8 simulated devices and
              brute-force retrieval over 1M x 512 candidates (scale.py);
  * `profile` ours and torch's time inside and outside matrix products (breakdown.py).
All parts run in this process one after another (the scale part spawns its own 8-device
process), so the machine's load is read and stored with every part: measure at idle, pinned
(`taskset -c 0` with `--threads=1`), and read the load line before the numbers.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

PARTS = ("gemm", "towers", "step", "scale", "profile")
FLAGS = flags.FLAGS


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_part(name: str, fn, report: dict) -> None:
    """Run one part, store its result with the load before and after and its wall time."""
    print(f"\n== {name} (load {_load()}) ==", flush=True)
    t = time.time()
    result = fn()
    report["parts"][name] = dict(result=result, load_before=report.setdefault("_last_load", _load()),
                                 load_after=_load(), wall_s=round(time.time() - t, 1))
    report["_last_load"] = _load()


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.parts) - set(PARTS))
    if unknown:
        raise app.UsageError(f"unknown parts {unknown}; expected some of {PARTS}")
    from experiments.benchmarks import breakdown, scale, step, towers

    towers.configure_threads(FLAGS.threads)  # before anything starts JAX in this process
    import jax
    import torch

    report = dict(meta=dict(cpus=os.cpu_count(), machine=platform.processor() or platform.machine(),
                            jax=jax.__version__, torch=torch.__version__, threads=FLAGS.threads,
                            sizes=FLAGS.sizes, repeats=FLAGS.repeats,
                            affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None),
                  parts={})
    sizes = FLAGS.sizes
    if "gemm" in FLAGS.parts:
        run_part("gemm", lambda: towers.gemm_row(FLAGS.gemm_size, repeats=FLAGS.repeats), report)
    if "towers" in FLAGS.parts:
        run_part("towers", lambda: towers.rows(towers=FLAGS.towers, sizes=sizes, repeats=FLAGS.repeats,
                                                threads=FLAGS.threads, compile=FLAGS.compile,
                                                gemm_gflops=_peak(report)), report)
    if "step" in FLAGS.parts:
        run_part("step", lambda: step.rows(sizes=sizes, repeats=FLAGS.repeats, torch_compile=FLAGS.compile),
                 report)
    if "scale" in FLAGS.parts:
        run_part("scale", lambda: scale.rows(global_batch=FLAGS.scale_batch, candidates=FLAGS.scale_candidates),
                 report)
    if "profile" in FLAGS.parts:
        run_part("profile", lambda: breakdown.rows(towers=FLAGS.towers, sizes=sizes, repeats=FLAGS.repeats,
                                                   peak=_peak(report)), report)
    report.pop("_last_load", None)
    print("\n" + summary(report))
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"wrote {FLAGS.output}")


def _peak(report: dict) -> float | None:
    """The JAX GEMM GFLOP/s measured by the gemm part, if it ran."""
    return report["parts"].get("gemm", {}).get("result", {}).get("jax_gflops")


def summary(report: dict) -> str:
    """The printed tables of every part that ran (each part module formats its own rows)."""
    from experiments.benchmarks import breakdown, scale, step, towers

    out = []
    parts = report["parts"]
    if "gemm" in parts:
        g = parts["gemm"]["result"]
        out.append(f"GEMM {g['size']} float32: JAX {g['jax_gflops']:.1f} GFLOP/s, torch {g['torch_gflops']:.1f} GFLOP/s "
                   f"(load {parts['gemm']['load_before']})")
    for name, mod in (("towers", towers), ("step", step), ("scale", scale), ("profile", breakdown)):
        if name in parts:
            p = parts[name]
            out += [f"\n{name} (load {p['load_before']} -> {p['load_after']}, {p['wall_s']} s)",
                    mod.table(p["result"])]
    return "\n".join(out)


if __name__ == "__main__":
    flags.DEFINE_list("parts", list(PARTS), f"parts to run, of {PARTS}")
    flags.DEFINE_list("towers", ["bert", "gin", "conformer", "pocket"], "towers for the towers and profile parts")
    flags.DEFINE_list("sizes", ["mini", "original"], "sizes: mini, original (tiny: a plumbing check)")
    flags.DEFINE_integer("repeats", 3, "interleaved rounds per row (the median is reported)")
    flags.DEFINE_integer("threads", 1, "CPU threads for both frameworks")
    flags.DEFINE_bool("compile", True, "also time the anchors under torch.compile")
    flags.DEFINE_integer("gemm_size", 2048, "n of the gemm part's n^3 float32 matmul")
    flags.DEFINE_integer("scale_batch", 65536, "global batch per pair of the scale part's loss")
    flags.DEFINE_integer("scale_candidates", 1_000_000, "candidates of the scale part's retrieval")
    flags.DEFINE_string("output", None, "write the whole report as JSON here")
    app.run(main)
