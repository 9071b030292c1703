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
# 1 node(s) x 4 GPUs, 64 images per GPU (256 in all), 200 epochs, resnet50.
# Upstream passes no --unmix_prob / --unmix_beta / --run_swav: Un-Mix with region mixing only
# (main_swav_unmix.py's ImageNet default --unmix_prob 0.0) and Beta(1, 1).
# The queue (3840 rows in all) works here; upstream crashed with a NameError once it filled.
# Upstream passes no --start_warmup here (0 warmup epochs, so it has no effect).
#
#   sbatch UnMix_SwAV/for_ImageNet/scripts/unmix_swav_200ep_bs256_pretrain.sh      # Slurm: srun, one task per GPU
#   NPROC=4 bash UnMix_SwAV/for_ImageNet/scripts/unmix_swav_200ep_bs256_pretrain.sh  # one machine via torchrun
#
# Every value can be overridden from the environment (DATASET_PATH = the ImageNet train folder,
# EXPERIMENT_PATH, EPOCHS, BS, ...; see unmix_swav_800ep_pretrain.sh); RESUME=true continues a run;
# PRETRAIN_ARGS appends arguments. LINEAR_EVAL=true then runs eval_linear.py on EVAL_DATA_PATH (default:
# the parent of DATASET_PATH, holding train/ and val/); its published recipe is 8 GPUs x 32 images, so
# for that run it as a separate 8-GPU job.
set -euo pipefail

for d in "${CODE_DIR:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-$PWD}" "${SLURM_SUBMIT_DIR:-$PWD}/UnMix_SwAV/for_ImageNet"; do
    if [ -f "$d/main_swav_unmix.py" ]; then CODE_DIR=$(cd "$d" && pwd); break; fi; done
export CODE_DIR=${CODE_DIR:?cannot find main_swav_unmix.py, set CODE_DIR=/path/to/UnMix_SwAV/for_ImageNet}
# what differs from unmix_swav_800ep_pretrain.sh
export EPOCHS="${EPOCHS:-200}" BASE_LR="${BASE_LR:-0.6}" FINAL_LR="${FINAL_LR:-0.0006}" WARMUP_EPOCHS="${WARMUP_EPOCHS:-0}" START_WARMUP="${START_WARMUP:-0}" QUEUE_LENGTH="${QUEUE_LENGTH:-3840}" EPOCH_QUEUE_STARTS="${EPOCH_QUEUE_STARTS:-15}" FREEZE_PROTOTYPES_NITERS="${FREEZE_PROTOTYPES_NITERS:-5005}" SYNC_BN="${SYNC_BN:-pytorch}" EXPERIMENT_PATH="${EXPERIMENT_PATH:-./experiments/unmix_swav_200ep_bs256}"
exec bash "$CODE_DIR/scripts/unmix_swav_800ep_pretrain.sh"
