#!/usr/bin/env bash
# Distributed training on one or more nodes, as MMDetection's dist_train.sh:
#   tools/dist_train.sh CONFIG NUM_PROCESSES [train.py options]
# Without a GPU the processes train on the CPU over gloo.
# NNODES, NODE_RANK, PORT and MASTER_ADDR set up multi-node runs; PYTHON
# picks the interpreter (default: the checkout's .venv/bin/python if there
# is one, else python).
set -euo pipefail
source "$(dirname "$0")/python.sh"

CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
