# Shared launcher for the UnMix_SwAV job scripts (sourced, not run).
#
# launch SCRIPT ARGS...   runs "python -u SCRIPT ARGS..." on every process of the job:
#   * inside a Slurm allocation (sbatch/salloc, SLURM_JOB_ID set and srun available): srun --label,
#     one process per task; the scripts read SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID;
#   * otherwise (plain bash on one machine): NPROC processes (default 1). NPROC=1 runs plain python
#     (no process group); NPROC>1 uses torchrun (python -m torch.distributed.run --standalone).
# Environment knobs: PYTHON (interpreter, default python), NPROC, USE_SRUN=0 to ignore Slurm,
# DIST_URL (rendezvous under srun; default tcp://<first node>:${MASTER_PORT:-40000}), DRY_RUN=1 to
# print the commands instead of running them.

PYTHON=${PYTHON:-python}

in_slurm() {
    [ -n "${SLURM_JOB_ID:-}" ] && [ "${USE_SRUN:-1}" != "0" ] && command -v srun >/dev/null 2>&1
}

# rendezvous for srun: the first node of the allocation (upstream sliced SLURM_NODELIST with
# FAIR-specific offsets; scontrol expands any node list)
slurm_dist_url() {
    if [ -n "${DIST_URL:-}" ]; then echo "$DIST_URL"; return; fi
    local master=""
    if command -v scontrol >/dev/null 2>&1 && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
        master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n 1)
    fi
    echo "tcp://${master:-localhost}:${MASTER_PORT:-40000}"
}

launch() {
    local script=$1
    shift
    if [ "${DRY_RUN:-0}" = "1" ]; then  # print the command instead of running it
        echo "launch $script $*"
        return 0
    fi
    if in_slurm; then
        srun --label "$PYTHON" -u "$script" --dist_url "$(slurm_dist_url)" "$@"
    elif [ "${NPROC:-1}" -gt 1 ]; then
        "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" "$script" \
            --dist_url env:// "$@"
    else
        "$PYTHON" -u "$script" "$@"
    fi
}

make_dir() {
    if [ "${DRY_RUN:-0}" != "1" ]; then mkdir -p "$@"; fi
}
