#!/usr/bin/env bash
# Multi-node GPUs without a scheduler: set the coordinator explicitly on every node.
#
#   node 0:  JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
#              BACKBONE_DIR=/shared/backbones bash experiments/launch/multinode_env.sh /shared/runs/m4
#   node 1:  JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \
#              BACKBONE_DIR=/shared/backbones bash experiments/launch/multinode_env.sh /shared/runs/m4
#   check first:  DRYRUN=1 DEVICES=8 bash experiments/launch/multinode_env.sh /shared/runs/m4 [flags]
#
# molbind_jax/training/sharding.py starts jax.distributed whenever JAX_COORDINATOR_ADDRESS is set
# (JAX_NUM_PROCESSES / JAX_PROCESS_ID / optional JAX_LOCAL_DEVICE_IDS are read there).
# The same two commands also run two CPU processes on one machine (a local multi-process
# check): give each a different JAX_PROCESS_ID and the same address on 127.0.0.1.
# Backbone file names and variables: experiments/launch/common.sh. DRYRUN=1 compiles one step
# for DEVICES simulated devices here (no coordinator, data or backbones needed) and prints
# per-device memory and FLOPs.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/launch/common.sh
maybe_dryrun "$@"
WORKDIR=${1:?shared workdir}; shift
: "${JAX_COORDINATOR_ADDRESS:?set JAX_COORDINATOR_ADDRESS=host:port}"
: "${JAX_NUM_PROCESSES:?set JAX_NUM_PROCESSES}"
: "${JAX_PROCESS_ID:?set JAX_PROCESS_ID}"
init_flags
exec "$PY" -m molbind_jax.training.train --config="$CONFIG" --workdir="$WORKDIR" ${INIT_FLAGS[@]+"${INIT_FLAGS[@]}"} "$@"
