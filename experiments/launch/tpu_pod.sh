#!/usr/bin/env bash
# MolBind-M4 on a TPU pod slice: the same command on every worker (one process per host).
#
#   BACKBONE_DIR=/mnt/backbones bash experiments/launch/tpu_pod.sh <tpu-name> <zone> <gs://bucket/run-dir> \
#       [extra --config.* flags]
#   DRYRUN=1 DEVICES=16 bash experiments/launch/tpu_pod.sh <tpu-name> <zone> <gs://...> [flags]   # check first
#
# Every worker runs `python -m molbind_jax.training.train --distributed` on CONFIG (default
# experiments/configs/m4.py) with the backbones of BACKBONE_DIR, a path every worker sees (see
# experiments/launch/common.sh for the file names and the per-file variables);
# jax.distributed auto-detects the slice (coordinator, process count and id come from the TPU
# metadata), each host reads its own 1/process_count of every global batch, and only process 0
# writes metrics. The workdir must be shared by all hosts (a gs:// bucket): orbax writes one
# checkpoint from all of them. Re-running the same command resumes from the latest checkpoint.
# DRYRUN=1 compiles one step for DEVICES simulated devices on this machine instead (no TPU, no
# data, no backbones) and prints per-device memory and FLOPs.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/launch/common.sh
maybe_dryrun "$@"
TPU=${1:?tpu name}; ZONE=${2:?zone}; WORKDIR=${3:?gs:// workdir}; shift 3
REPO_URL=${REPO_URL:-https://github.com/your-org/molbind-jax.git}
init_flags

"${GCLOUD:-gcloud}" compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d molbind-jax ] || git clone $REPO_URL molbind-jax
  cd molbind-jax
  make setup
  .venv/bin/pip install -q 'jax[tpu]==0.10.2' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  .venv/bin/python -m molbind_jax.training.train --distributed \
      --config=$CONFIG --workdir=$WORKDIR \
      --config.data.data_dir=${DATA_DIR:-gs://your-bucket/tfds} ${INIT_FLAGS[*]+${INIT_FLAGS[*]}} $*
"
