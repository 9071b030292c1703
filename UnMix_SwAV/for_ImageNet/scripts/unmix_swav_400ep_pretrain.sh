#!/bin/bash
#SBATCH --nodes=8
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --job-name=unmix_swav_400ep_pretrain
#SBATCH --time=25:00:00
#SBATCH --mem=450G
#
# SwAV + Un-Mix ImageNet pretraining, upstream UnMix_SwAV/for_ImageNet/scripts/unmix_swav_400ep_pretrain.sh:
# 8 node(s) x 8 GPUs, 64 images per GPU (4096 in all), 400 epochs, resnet50.
# Upstream passes no --unmix_prob / --unmix_beta / --run_swav: Un-Mix with region mixing only
# (main_swav_unmix.py's ImageNet default --unmix_prob 0.0) and Beta(1, 1).
#
#   sbatch UnMix_SwAV/for_ImageNet/scripts/unmix_swav_400ep_pretrain.sh      # Slurm: srun, one task per GPU
#   NPROC=8 bash UnMix_SwAV/for_ImageNet/scripts/unmix_swav_400ep_pretrain.sh  # one machine via torchrun
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
export EPOCHS="${EPOCHS:-400}"
exec bash "$CODE_DIR/scripts/unmix_swav_800ep_pretrain.sh"
