#!/bin/bash
#SBATCH --nodes=1
#SBATCH --gpus-per-node=4
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=4
#SBATCH --job-name=unmix_swav_200ep_bs256_pretrain
#SBATCH --time=72:00:00
#SBATCH --mem=150G
#
# SwAV + Un-Mix ImageNet pretraining, upstream UnMix_SwAV/for_ImageNet/scripts/unmix_swav_200ep_bs256_pretrain.sh:
# 1 node(s) x 4 GPUs, 64 images per GPU (global 256), 200 epochs, resnet50.
# Upstream passes no --unmix_prob / --unmix_beta / --run_swav: Un-Mix with region mixing only
# (main_swav_unmix.py's ImageNet default --unmix_prob 0.0) and Beta(1, 1).
# The queue (3840 global rows) works here; upstream crashed with a NameError once it filled.
# start_warmup is not passed (warmup_epochs 0), as upstream.
#
#   sbatch UnMix_SwAV/for_ImageNet/scripts/unmix_swav_200ep_bs256_pretrain.sh      # Slurm: srun, one task per GPU
#   NPROC=8 bash UnMix_SwAV/for_ImageNet/scripts/unmix_swav_200ep_bs256_pretrain.sh  # one machine via torchrun
#
# Values can be overridden from the environment (DATASET_PATH, EXPERIMENT_PATH, EPOCHS, BS, ...);
# RESUME=true continues a run; PRETRAIN_ARGS appends arguments. LINEAR_EVAL=true then runs
# eval_linear.py on EVAL_DATA_PATH (default: the parent of DATASET_PATH, holding train/ and val/);
# note its published recipe is 8 GPUs x 32 images (launch it as a separate 8-GPU job for that).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for d in "${CODE_DIR:-}" "$HERE/.." "${SLURM_SUBMIT_DIR:-$PWD}" "${SLURM_SUBMIT_DIR:-$PWD}/UnMix_SwAV/for_ImageNet"; do
    if [ -n "$d" ] && [ -f "$d/main_swav_unmix.py" ]; then CODE_DIR=$(cd "$d" && pwd); break; fi
done
if [ ! -f "${CODE_DIR:-}/main_swav_unmix.py" ]; then
    echo "unmix_swav_200ep_bs256_pretrain.sh: error: cannot find main_swav_unmix.py; set CODE_DIR=/path/to/UnMix_SwAV/for_ImageNet" >&2
    exit 2
fi
source "$CODE_DIR/../launch.sh"

DATASET_PATH=${DATASET_PATH:-/path/to/imagenet/train}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./experiments/unmix_swav_200ep_bs256}
EPOCHS=${EPOCHS:-200}
BS=${BS:-64}
BASE_LR=${BASE_LR:-0.6}
FINAL_LR=${FINAL_LR:-0.0006}
WARMUP_EPOCHS=${WARMUP_EPOCHS:-0}
START_WARMUP=${START_WARMUP:-0}
NMB_CROPS=${NMB_CROPS:-2 6}
SIZE_CROPS=${SIZE_CROPS:-224 96}
MIN_SCALE_CROPS=${MIN_SCALE_CROPS:-0.14 0.05}
MAX_SCALE_CROPS=${MAX_SCALE_CROPS:-1. 0.14}
NMB_PROTOTYPES=${NMB_PROTOTYPES:-3000}
QUEUE_LENGTH=${QUEUE_LENGTH:-3840}
EPOCH_QUEUE_STARTS=${EPOCH_QUEUE_STARTS:-15}
FREEZE_PROTOTYPES_NITERS=${FREEZE_PROTOTYPES_NITERS:-5005}
SYNC_BN=${SYNC_BN:-pytorch}
ARCH=${ARCH:-resnet50}
HIDDEN_MLP=${HIDDEN_MLP:-2048}
USE_FP16=${USE_FP16:-true}
WORKERS=${WORKERS:-10}
RESUME=${RESUME:-false}
LINEAR_EVAL=${LINEAR_EVAL:-false}
EVAL_DATA_PATH=${EVAL_DATA_PATH:-$(dirname "$DATASET_PATH")}
EVAL_EPOCHS=${EVAL_EPOCHS:-100}
EVAL_BS=${EVAL_BS:-32}

make_dir "$EXPERIMENT_PATH"
launch "$CODE_DIR/main_swav_unmix.py" \
    --data_path "$DATASET_PATH" \
    --nmb_crops $NMB_CROPS \
    --size_crops $SIZE_CROPS \
    --min_scale_crops $MIN_SCALE_CROPS \
    --max_scale_crops $MAX_SCALE_CROPS \
    --crops_for_assign 0 1 \
    --temperature 0.1 \
    --epsilon 0.05 \
    --sinkhorn_iterations 3 \
    --feat_dim 128 \
    --nmb_prototypes "$NMB_PROTOTYPES" \
    --queue_length "$QUEUE_LENGTH" \
    --epoch_queue_starts "$EPOCH_QUEUE_STARTS" \
    --epochs "$EPOCHS" \
    --batch_size "$BS" \
    --base_lr "$BASE_LR" \
    --final_lr "$FINAL_LR" \
    --freeze_prototypes_niters "$FREEZE_PROTOTYPES_NITERS" \
    --wd 0.000001 \
    --warmup_epochs "$WARMUP_EPOCHS" \
    --start_warmup "$START_WARMUP" \
    --arch "$ARCH" \
    --hidden_mlp "$HIDDEN_MLP" \
    --use_fp16 "$USE_FP16" \
    --sync_bn "$SYNC_BN" \
    --workers "$WORKERS" \
    --dump_path "$EXPERIMENT_PATH" \
    --resume "$RESUME" \
    ${PRETRAIN_ARGS:-}

if [ "$LINEAR_EVAL" = "true" ]; then
    make_dir "${EXPERIMENT_PATH}_linear_eval"
    launch "$CODE_DIR/eval_linear.py" \
        --data_path "$EVAL_DATA_PATH" \
        --arch "$ARCH" \
        --pretrained "$EXPERIMENT_PATH/checkpoint.pth.tar" \
        --dump_path "${EXPERIMENT_PATH}_linear_eval" \
        --epochs "$EVAL_EPOCHS" \
        --batch_size "$EVAL_BS" \
        --workers "$WORKERS" \
        --resume "$RESUME" \
        ${EVAL_ARGS:-}
fi
