#!/usr/bin/env bash
# Pretraining throughput on one GPU, in about 10 minutes: ViT-S/16 and ViT-B/16 at the paper's crops
# (2 x 224 + 8 x 96), bf16 autocast, eager and torch.compile, each as the step alone and end to end
# from tar shards through the bundle's own loader, printed with the same run's bf16 matmul peak.
#
#   bash benchmarks/gpu_pretrain.sh SHARDS_DIR [WORKERS]
#
# SHARDS_DIR: python -m data_prep.shards output with at least WORKERS shards (the demo's frames
# written with --shard-size-mb 0.5 give 36). WORKERS defaults to the node's CPU count minus 2.
set -euo pipefail
cd "$(dirname "$0")/.."
shards=${1:?usage: bash benchmarks/gpu_pretrain.sh SHARDS_DIR [WORKERS]}
workers=${2:-$(($(nproc) - 2))}
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
for run in "vit_small 128" "vit_small 128 --compile" "vit_base 64" "vit_base 64 --compile"; do
    set -- $run
    echo "== $run"
    "$py" benchmarks/pretrain_e2e.py --device cuda --arch "$1" --batch "$2" "${@:3}" \
        --workers "$workers" --dataset-dir "$shards" --iterations 30 --warmup 8 2>&1 | grep -v " - INFO - "
done
