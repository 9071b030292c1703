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

# upstream's c100 script differs from the c10 one only in the job name, DATASET_PATH and num_labels
for d in "${CODE_DIR:-}" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-$PWD}" "${SLURM_SUBMIT_DIR:-$PWD}/UnMix_SwAV/for_CIFAR"; do
    if [ -f "$d/main_swav_unmix.py" ]; then CODE_DIR=$(cd "$d" && pwd); break; fi; done
export CODE_DIR=${CODE_DIR:?cannot find main_swav_unmix.py, set CODE_DIR=/path/to/UnMix_SwAV/for_CIFAR}
export DATASET_PATH=${DATASET_PATH:-cifar100} NUM_LABELS=${NUM_LABELS:-100}
exec bash "$CODE_DIR/script_unmix_c10.sh"
