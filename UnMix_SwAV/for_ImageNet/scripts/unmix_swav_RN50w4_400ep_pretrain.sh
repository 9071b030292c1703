#!/bin/bash
#SBATCH --nodes=8
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --job-name=unmix_swav_RN50w4_400ep_pretrain
#SBATCH --time=72:00:00
#SBATCH --constraint=volta32gb
#
# SwAV + Un-Mix ImageNet pretraining, upstream UnMix_SwAV/for_ImageNet/scripts/unmix_swav_RN50w4_400ep_pretrain.sh:
# 8 node(s) x 8 GPUs, 40 images per GPU (2560 in all), 400 epochs, resnet50w4.
# Upstream passes no --unmix_prob / --unmix_beta / --run_swav: Un-Mix with region mixing only
# (main_swav_unmix.py's ImageNet default --unmix_prob 0.0) and Beta(1, 1).
# The queue (2560 rows in all) works here; upstream crashed with a NameError once it filled.
#
#   sbatch UnMix_SwAV/for_ImageNet/scripts/unmix_swav_RN50w4_400ep_pretrain.sh      # Slurm: srun, one task per GPU
#   NPROC=8 bash UnMix_SwAV/for_ImageNet/scripts/unmix_swav_RN50w4_400ep_pretrain.sh  # one machine via torchrun
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
export EPOCHS="${EPOCHS:-400}" BS="${BS:-40}" NMB_CROPS="${NMB_CROPS:-2 4}" MIN_SCALE_CROPS="${MIN_SCALE_CROPS:-0.08 0.08}" QUEUE_LENGTH="${QUEUE_LENGTH:-2560}" EPOCH_QUEUE_STARTS="${EPOCH_QUEUE_STARTS:-0}" ARCH="${ARCH:-resnet50w4}" HIDDEN_MLP="${HIDDEN_MLP:-8192}" EXPERIMENT_PATH="${EXPERIMENT_PATH:-./experiments/unmix_swav_RN50w4_400ep}"
exec bash "$CODE_DIR/scripts/unmix_swav_800ep_pretrain.sh"
