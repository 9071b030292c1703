#!/bin/bash
#SBATCH --nodes=8
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --job-name=unmix_swav_800ep_pretrain
#SBATCH --time=50:00:00
#SBATCH --mem=450G
#
# SwAV + Un-Mix ImageNet pretraining, upstream UnMix_SwAV/for_ImageNet/scripts/unmix_swav_800ep_pretrain.sh:
# 8 node(s) x 8 GPUs, 64 images per GPU (4096 in all), 800 epochs, resnet50.
# Upstream passes no --unmix_prob / --unmix_beta / --run_swav: Un-Mix with region mixing only
# (main_swav_unmix.py's ImageNet default --unmix_prob 0.0) and Beta(1, 1).
#
#   sbatch UnMix_SwAV/for_ImageNet/scripts/unmix_swav_800ep_pretrain.sh      # Slurm: srun, one task per GPU
#   NPROC=8 bash UnMix_SwAV/for_ImageNet/scripts/unmix_swav_800ep_pretrain.sh  # one machine via torchrun
#
# Every value can be overridden from the environment (DATASET_PATH = the ImageNet train folder,
# EXPERIMENT_PATH, EPOCHS, BS, ...; see unmix_swav_800ep_pretrain.sh); RESUME=true continues a run;
# PRETRAIN_ARGS appends arguments. LINEAR_EVAL=true then runs eval_linear.py on EVAL_DATA_PATH (default:
# the parent of DATASET_PATH, holding train/ and val/); its published recipe is 8 GPUs x 32 images, so
# for that run it as a separate 8-GPU job.
set -euo pipefail

for d in "${CODE_DIR:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-$PWD}" "${SLURM_SUBMIT_DIR:-$PWD}/UnMix_SwAV/for_ImageNet"; do
    if [ -f "$d/main_swav_unmix.py" ]; then CODE_DIR=$(cd "$d" && pwd); break; fi; done
source "${CODE_DIR:?cannot find main_swav_unmix.py, set CODE_DIR=/path/to/UnMix_SwAV/for_ImageNet}/../launch.sh"

# the published values (upstream scripts/unmix_swav_800ep_pretrain.sh); each can be overridden from the
# environment (the other scripts set only what differs, then run this one)
: "${DATASET_PATH:=/path/to/imagenet/train}" "${EPOCHS:=800}" "${BS:=64}" "${WORKERS:=10}"
: "${BASE_LR:=4.8}" "${FINAL_LR:=0.0048}" "${WARMUP_EPOCHS:=10}" "${START_WARMUP:=0.3}"
: "${NMB_CROPS:=2 6}" "${SIZE_CROPS:=224 96}" "${MIN_SCALE_CROPS:=0.14 0.05}" "${MAX_SCALE_CROPS:=1. 0.14}"
: "${NMB_PROTOTYPES:=3000}" "${QUEUE_LENGTH:=0}" "${EPOCH_QUEUE_STARTS:=15}" "${FREEZE_PROTOTYPES_NITERS:=313}"
: "${ARCH:=resnet50}" "${HIDDEN_MLP:=2048}" "${SYNC_BN:=apex}" "${USE_FP16:=true}" "${RESUME:=false}"
: "${EXPERIMENT_PATH:=./experiments/unmix_swav_${EPOCHS}ep}"
: "${LINEAR_EVAL:=false}" "${EVAL_DATA_PATH:=$(dirname "$DATASET_PATH")}" "${EVAL_EPOCHS:=100}" "${EVAL_BS:=32}"

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
