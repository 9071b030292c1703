#!/bin/bash
#SBATCH --nodes=1
#SBATCH --gpus=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --partition=default
#SBATCH --job-name=c10
#SBATCH --time=12:00:00
#SBATCH --mem=50G
#
# Un-Mix + SwAV on CIFAR-10 (ResNet-18-Bottleneck, 2x32px crops, batch 128 on 1 GPU), then linear
# evaluation of the last pretraining checkpoint; upstream's UnMix_SwAV/for_CIFAR/script_unmix_c10.sh.
#
#   sbatch UnMix_SwAV/for_CIFAR/script_unmix_c10.sh        # Slurm (srun inside the allocation)
#   bash   UnMix_SwAV/for_CIFAR/script_unmix_c10.sh        # one machine (NPROC=2 for two processes via torchrun)
#
# Every value below is the published one and can be overridden from the environment, e.g.
#   EPOCHS=1000 bash script_unmix_c10.sh        RUN_SWAV=true bash script_unmix_c10.sh (the SwAV baseline)
#   RESUME=true sbatch script_unmix_c10.sh      (continue both steps after a preemption)
# PRETRAIN_ARGS / EVAL_ARGS append extra arguments to the two steps.
set -euo pipefail

# the code folder: next to this file under bash; the submission folder under sbatch (a spooled copy)
for d in "${CODE_DIR:-}" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-$PWD}" "${SLURM_SUBMIT_DIR:-$PWD}/UnMix_SwAV/for_CIFAR"; do
    if [ -f "$d/main_swav_unmix.py" ]; then CODE_DIR=$(cd "$d" && pwd); break; fi; done
source "${CODE_DIR:?cannot find main_swav_unmix.py, set CODE_DIR=/path/to/UnMix_SwAV/for_CIFAR}/../launch.sh"
export MASTER_PORT=${MASTER_PORT:-10001}  # upstream: --dist_url tcp://localhost:10001

# the published values (upstream script_unmix_c10.sh); each can be overridden from the environment
: "${ARCH:=resnet18}" "${HIDDEN_MLP:=512}" "${DATASET_PATH:=cifar10}" "${NUM_LABELS:=10}" "${WORKERS:=2}"
: "${EPOCHS:=400}" "${BS:=128}" "${LR_START:=0.6}" "${LR_END:=0.0006}" "${WARMUP_EPOCHS:=5}"
: "${NMB_CROPS:=2}" "${SIZE_CROPS:=32}" "${MIN_SCALE_CROPS:=0.14}" "${MAX_SCALE_CROPS:=1.0}"
: "${NMB_PROTOTYPES:=100}" "${FREEZE_PROTOTYPES_NITERS:=5005}" "${USE_FP16:=true}" "${RUN_SWAV:=false}"
: "${QUEUE_LENGTH:=120}" "${EPOCH_QUEUE_STARTS:=15}"  # 120 rounds down to 0 with batch 128: no queue (upstream)
: "${EVAL_EPOCHS:=100}" "${EVAL_BS:=32}" "${RESUME:=false}"  # linear evaluation: upstream defaults otherwise
: "${EXPERIMENT_PATH:=./experiments/unmix_swav_cifar_${BS}_${ARCH}_${EPOCHS}ep_${NMB_PROTOTYPES}prot_$(basename "$DATASET_PATH")}"

make_dir "$EXPERIMENT_PATH"
launch "$CODE_DIR/main_swav_unmix.py" \
    --data_path "$DATASET_PATH" \
    --arch "$ARCH" \
    --epochs "$EPOCHS" \
    --base_lr "$LR_START" \
    --final_lr "$LR_END" \
    --warmup_epochs "$WARMUP_EPOCHS" \
    --batch_size "$BS" \
    --size_crops $SIZE_CROPS \
    --nmb_crops $NMB_CROPS \
    --min_scale_crops $MIN_SCALE_CROPS \
    --max_scale_crops $MAX_SCALE_CROPS \
    --use_fp16 "$USE_FP16" \
    --run_swav "$RUN_SWAV" \
    --freeze_prototypes_niters "$FREEZE_PROTOTYPES_NITERS" \
    --nmb_prototypes "$NMB_PROTOTYPES" \
    --queue_length "$QUEUE_LENGTH" \
    --hidden_mlp "$HIDDEN_MLP" \
    --epoch_queue_starts "$EPOCH_QUEUE_STARTS" \
    --dump_path "$EXPERIMENT_PATH" \
    --temperature 0.1 \
    --epsilon 0.05 \
    --workers "$WORKERS" \
    --resume "$RESUME" \
    ${PRETRAIN_ARGS:-}

make_dir "${EXPERIMENT_PATH}_linear_eval"
launch "$CODE_DIR/eval_linear.py" \
    --num_labels "$NUM_LABELS" \
    --crop_size 32 \
    --workers "$WORKERS" \
    --arch "$ARCH" \
    --data_path "$DATASET_PATH" \
    --pretrained "$EXPERIMENT_PATH/checkpoint.pth.tar" \
    --dump_path "${EXPERIMENT_PATH}_linear_eval" \
    --epochs "$EVAL_EPOCHS" \
    --batch_size "$EVAL_BS" \
    --resume "$RESUME" \
    ${EVAL_ARGS:-}
