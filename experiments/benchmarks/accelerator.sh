#!/usr/bin/env bash
# The original-size MolBind train step on this machine's accelerator (GPU or TPU; CPU works
# too): float32 and bf16, split and fused, each in its own process. Writes
# ${OUT:-.}/accelerator.json and ${OUT:-.}/accelerator.txt (the log and the printed table).
# Needs no data and no network. Extra arguments go to accelerator.py, e.g.
#     experiments/benchmarks/accelerator.sh --size=tiny --steps=2      # the CPU test's path
#     experiments/benchmarks/accelerator.sh --remat=full --batch_conformer_pocket=32
# PYTHON picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
# The checkout first; data_pipeline/ imports as molbind_data (an install, the checkout's .pyshim
# link, or else a link made here in a temporary folder).
export PYTHONPATH="$ROOT/.pyshim:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import molbind_data' 2>/dev/null; then
  SHIM="$(mktemp -d)"
  ln -s "$ROOT/data_pipeline" "$SHIM/molbind_data"
  export PYTHONPATH="$SHIM:$PYTHONPATH"
fi
{
  "$PYTHON" -c 'import jax; print("jax", jax.__version__, "devices:", jax.devices())'
  "$PYTHON" "$ROOT/experiments/benchmarks/accelerator.py" \
    --variants=f32_split,f32_fused,bf16_split,bf16_fused "$@" \
    --output="$OUT_DIR/accelerator.json"
} 2>&1 | tee "$OUT_DIR/accelerator.txt"
