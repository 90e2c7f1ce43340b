#!/usr/bin/env bash
# The main job (`make demo`): build molbind_mini, train the mini config, export, evaluate.
#
#   bash experiments/demo.sh [WORKDIR]          # default WORKDIR: runs/demo
#
# Re-running reuses what exists: the dataset build is skipped when built, training resumes
# from the last checkpoint (and returns at once when finished), the export is redone only
# when the checkpoints changed, and the evaluation is rerun (it is the output).
# DEMO_EMERGENT=1 also trains experiments/configs/emergent.py in WORKDIR/emergent and adds
# the emergent conformer<->text section to the report.
# DEMO_SEEDS=N (default 1) trains the config N times: WORKDIR is seed 0 (the config as it is;
# its `seed` is 0 in mini.py), WORKDIR/seed_K for K = 1..N-1 with --config.seed=K; each is exported and
# evaluated into its own directory, and molbind_jax.evaluation.seeds writes the spread over
# the runs to WORKDIR/seeds.md and WORKDIR/seeds.json.
# DEMO_PROTOCOL=both adds the original evaluation protocol and the ladder to ours in the report.
# TFDS_DATA_DIR defaults to data/tfds in the repository (gitignored). Every step shows
# progress; the log of each step is kept in WORKDIR/logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORKDIR="${1:-runs/demo}"
PY="${PY:-$ROOT/.venv/bin/python}"
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$ROOT/data/tfds}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CONFIG="${DEMO_CONFIG:-experiments/configs/mini.py}"
SEEDS="${DEMO_SEEDS:-1}"
if ! [[ "$SEEDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "DEMO_SEEDS must be a positive integer, got '$SEEDS'" >&2
  exit 2
fi
mkdir -p "$WORKDIR/logs" "$TFDS_DATA_DIR"

START=$(date +%s)
stamp() { printf '[demo %4ds] %s\n' "$(( $(date +%s) - START ))" "$*"; }
# Run a step, teeing its output (progress bars included) into a log file.
step() {
  local name="$1"; shift
  stamp "$name: $*"
  "$@" 2>&1 | tee "$WORKDIR/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    stamp "$name FAILED (exit $rc); log: $WORKDIR/logs/$name.log"
    exit "$rc"
  fi
  stamp "$name done"
}

# 1. Data: the build command itself reuses a complete build (molbind_data.build).
step build "$PY" -m molbind_data.build --source=mini --data_dir="$TFDS_DATA_DIR"

# 2. Training: resumes from WORKDIR's checkpoints; a finished run returns immediately.
step train "$PY" -m molbind_jax.training.train --config="$CONFIG" --workdir="$WORKDIR"

# 3. Export, unless the export was made from the checkpoints that exist now.
export_run() {  # export_run STEP_NAME RUN_DIR
  local name="$1" dir="$2" ckpts
  ckpts="$(ls "$dir/checkpoints" 2>/dev/null | sort -n | tr '\n' ' ')"
  if [ ! -f "$dir/export/.demo-exported" ] || [ "$(cat "$dir/export/.demo-exported")" != "$ckpts" ]; then
    rm -rf "$dir/export"
    step "$name" "$PY" -m molbind_jax.training.export --workdir="$dir" --output="$dir/export"
    printf '%s' "$ckpts" > "$dir/export/.demo-exported"
  else
    stamp "$name: up to date ($dir/export, checkpoints: $ckpts)"
  fi
}
export_run export "$WORKDIR"

# 4. Optional (DEMO_EMERGENT=1): the emergent run, mini without conformer_text pairs.
EVAL_EXTRA=()
if [ "${DEMO_EMERGENT:-0}" = "1" ]; then
  EWORK="$WORKDIR/emergent"
  step train_emergent "$PY" -m molbind_jax.training.train --config=experiments/configs/emergent.py --workdir="$EWORK"
  if [ ! -f "$EWORK/export/config.json" ]; then
    step export_emergent "$PY" -m molbind_jax.training.export --workdir="$EWORK" --output="$EWORK/export"
  fi
  EVAL_EXTRA+=("--emergent_workdir=$EWORK")
fi

# 5. Evaluation: tables on stdout, report.md / metrics.json / plots in WORKDIR.
# Our protocol only by default: the original's (DEMO_PROTOCOL=both) re-embeds every test text
# without [CLS]/[SEP], 1.5 more minutes of MiniLM here.
EVAL_EXTRA+=("--protocol=${DEMO_PROTOCOL:-ours}")
step evaluate "$PY" -m molbind_jax.evaluation.evaluate --workdir="$WORKDIR" --data_dir="$TFDS_DATA_DIR" "${EVAL_EXTRA[@]}"

# 6. Optional (DEMO_SEEDS=N > 1): the same config with seeds 1..N-1, then the spread.
RUNS="$WORKDIR"
for (( K = 1; K < SEEDS; K++ )); do
  SWORK="$WORKDIR/seed_$K"
  step "train_seed$K" "$PY" -m molbind_jax.training.train --config="$CONFIG" --workdir="$SWORK" --config.seed="$K"
  export_run "export_seed$K" "$SWORK"
  step "evaluate_seed$K" "$PY" -m molbind_jax.evaluation.evaluate --workdir="$SWORK" --data_dir="$TFDS_DATA_DIR" --protocol="${DEMO_PROTOCOL:-ours}"
  RUNS="$RUNS,$SWORK"
done
if [ "$SEEDS" -gt 1 ]; then
  step seeds "$PY" -m molbind_jax.evaluation.seeds --workdirs="$RUNS" --output="$WORKDIR"
fi

stamp "finished in $(( $(date +%s) - START ))s"
echo
echo "Retrieval against the whole test split (%), from $WORKDIR/report.md:"
sed -n '/^## Retrieval against the whole test split/,/^## In-batch/p' "$WORKDIR/report.md" | grep '^|'
echo
echo "Report: $WORKDIR/report.md (metrics.json, recall_curves.png, loss_curves.png, embedding_map.png)"
if [ "$SEEDS" -gt 1 ]; then
  echo
  echo "Spread over $SEEDS seeds, full-split retrieval (fractions), from $WORKDIR/seeds.md:"
  grep -E '^\| (number|---|retrieval/[^ ]*/full/)' "$WORKDIR/seeds.md" || true
  echo "Every number: $WORKDIR/seeds.md ($WORKDIR/seeds.json)"
fi
