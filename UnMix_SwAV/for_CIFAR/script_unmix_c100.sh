#!/bin/bash
#SBATCH --nodes=1
#SBATCH --gpus=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --partition=default
#SBATCH --job-name=c100
#SBATCH --time=12:00:00
#SBATCH --mem=50G
#
# Un-Mix + SwAV on CIFAR-100 (ResNet-18-Bottleneck, 2x32px crops, batch 128 on 1 GPU), then linear
# evaluation of the last pretraining checkpoint; upstream's UnMix_SwAV/for_CIFAR/script_unmix_c100.sh.
#
#   sbatch UnMix_SwAV/for_CIFAR/script_unmix_c100.sh        # Slurm (srun inside the allocation)
#   bash   UnMix_SwAV/for_CIFAR/script_unmix_c100.sh        # one machine (NPROC=2 for two processes via torchrun)
#
# Every value below is the published one and can be overridden from the environment, e.g.
#   EPOCHS=1000 bash script_unmix_c100.sh        RUN_SWAV=true bash script_unmix_c100.sh (the SwAV baseline)
#   RESUME=true sbatch script_unmix_c100.sh      (continue both steps after a preemption)
# PRETRAIN_ARGS / EVAL_ARGS append extra arguments to the two steps.
set -euo pipefail

# the code folder: next to this file under bash; the submission folder under sbatch (spooled copy)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for d in "${CODE_DIR:-}" "$HERE" "${SLURM_SUBMIT_DIR:-$PWD}" "${SLURM_SUBMIT_DIR:-$PWD}/UnMix_SwAV/for_CIFAR"; do
    if [ -n "$d" ] && [ -f "$d/main_swav_unmix.py" ]; then CODE_DIR=$(cd "$d" && pwd); break; fi
done
if [ ! -f "${CODE_DIR:-}/main_swav_unmix.py" ]; then
    echo "script_unmix_c100.sh: error: cannot find main_swav_unmix.py; set CODE_DIR=/path/to/UnMix_SwAV/for_CIFAR" >&2
    exit 2
fi
source "$CODE_DIR/../launch.sh"
export MASTER_PORT=${MASTER_PORT:-10001}  # upstream: --dist_url tcp://localhost:10001

ARCH=${ARCH:-resnet18}
HIDDEN_MLP=${HIDDEN_MLP:-512}
DATASET_PATH=${DATASET_PATH:-cifar100}   # cifar10/cifar100 (download into ./data) or a folder
MIN_SCALE_CROPS=${MIN_SCALE_CROPS:-0.14}
MAX_SCALE_CROPS=${MAX_SCALE_CROPS:-1.0}
EPOCHS=${EPOCHS:-400}
BS=${BS:-128}
LR_START=${LR_START:-0.6}
LR_END=${LR_END:-0.0006}
WARMUP_EPOCHS=${WARMUP_EPOCHS:-5}
SIZE_CROPS=${SIZE_CROPS:-32}
NMB_CROPS=${NMB_CROPS:-2}
NMB_PROTOTYPES=${NMB_PROTOTYPES:-100}
QUEUE_LENGTH=${QUEUE_LENGTH:-120}         # rounds down to 0 with batch 128: no queue (upstream quirk)
EPOCH_QUEUE_STARTS=${EPOCH_QUEUE_STARTS:-15}
USE_FP16=${USE_FP16:-true}
FREEZE_PROTOTYPES_NITERS=${FREEZE_PROTOTYPES_NITERS:-5005}
RUN_SWAV=${RUN_SWAV:-false}               # true: vanilla SwAV
WORKERS=${WORKERS:-2}
NUM_LABELS=${NUM_LABELS:-100}
EVAL_EPOCHS=${EVAL_EPOCHS:-100}           # linear evaluation: upstream defaults (lr 0.3, cosine, bs 32)
EVAL_BS=${EVAL_BS:-32}
RESUME=${RESUME:-false}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./experiments/unmix_swav_cifar_${BS}_${ARCH}_${EPOCHS}ep_${NMB_PROTOTYPES}prot_$(basename "$DATASET_PATH")}

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
