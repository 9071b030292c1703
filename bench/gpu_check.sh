#!/usr/bin/env bash
# One check of the CUDA paths on a GPU machine, then one summary table:
#   1. tests/test_cuda.py: every training entry point for two steps, with and without mixed precision, --aug device,
#      SwAV + SyncBatchNorm on a one-process NCCL group;
#   2. tests/test_cuda_resume.py: every training script killed after its first checkpoint and resumed (compared with
#      the uninterrupted run), a resume from a checkpoint saved under more visible GPUs, the evaluations (MoCo lincls,
#      SwAV linear and semi-supervised), MoCo CIFAR --mix samix --amp, two processes (SyncBatchNorm over NCCL with 2
#      GPUs; on one GPU two processes sharing it over gloo, the SyncBN test then skipped with its reason);
#   3. the benchmarks (bench/*.py).
# Builds its own tiny data (tests/fakedata.py via the tests' fixtures; the benchmarks use synthetic images), needs no
# network. The three parts are budgeted to 9 minutes together, under the device machine's 10-minute limit per command;
# GPU_CHECK_ONLY runs some of them (one call each where a machine's time is short); the summary covers what ran:
#
#     bash bench/gpu_check.sh              # from the repository root; writes gpu_check/ (logs + summary.txt)
#     GPU_CHECK_OUT=/tmp/x bash bench/gpu_check.sh
#     GPU_CHECK_DRY=1 bash bench/gpu_check.sh   # the same commands on a CPU, tiny sizes: checks the script itself
#     GPU_CHECK_PACK=1 ...                      # its logs and junit XML packed into logs.tar.gz beside summary.txt
#     GPU_CHECK_PYTHON=/path/to/python ...      # the interpreter (default: python3, else python)
#     GPU_CHECK_ONLY=tests,resume ... / GPU_CHECK_ONLY=bench ...   # only these parts (default: tests,resume,bench)
#
# It runs under the GPU machine's own interpreter and packages, which may be older than requirements.txt's pins:
# the first step prints their versions and stops in one line if a module the checks import is missing (only those:
# torch, torchvision, numpy, pandas, matplotlib, tqdm, PIL, pytest).
set -u
# the interpreter and the output folder as given from the caller's folder, then work from the repository root
PY=$(command -v "${GPU_CHECK_PYTHON:-python3}" || command -v python) \
    || { echo "gpu_check: no python3 or python on the PATH (set GPU_CHECK_PYTHON)"; exit 1; }
case "$PY" in /*) ;; *) PY=$PWD/$PY ;; esac
OUT=$(realpath -m "${GPU_CHECK_OUT:-$(dirname "$0")/../gpu_check}")
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
# what an earlier check left must not be read as this one's
rm -f -- "$OUT"/{device.txt,summary.txt,logs.tar.gz} "$OUT"/cuda_*.{txt,xml} "$OUT"/bench_*.txt
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
start=$(date +%s)

DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then
    export UNMIX_CUDA_TESTS_ON_CPU=1
    SIZE=(--batch-size 32 --batches 2 --repeats 1)
    E2E=(--e2e-steps 1 --e2e-batch 8)
    MOCO=(--batch-size 16 --steps 1 --warmup 0)
    SAMIX=(--batch-size 8 --steps 1 --warmup 0)
    BUDGET=3000
    SCALE=5  # the CPU runs the GPU's commands far slower: each step's limit x 5
else
    SIZE=(--repeats 3 --batches 6)
    E2E=(--e2e-steps 5 --amp)
    MOCO=(--batch-size 512 --steps 5)
    SAMIX=(--batch-size 100 --steps 10)
    SCALE=1
    BUDGET=540  # seconds for tests + benchmarks; the start and the table add well under a minute
fi
ONLY=,${GPU_CHECK_ONLY:-tests,resume,bench},
case "$ONLY" in *,tests,*|*,resume,*|*,bench,*) ;; *) echo "gpu_check: GPU_CHECK_ONLY takes tests, resume, bench"; exit 1 ;; esac
part() { case "$ONLY" in *,"$1",*) return 0 ;; *) return 1 ;; esac; }
left() { echo $(( start + BUDGET - $(date +%s) )); }
limit() { local t; t=$(left); [ "$t" -gt "$1" ] && t=$1; [ "$t" -lt 5 ] && t=5; echo "$t"; }

DRY=$DRY "$PY" - <<'EOF' | tee "$OUT/device.txt"
import importlib, os, platform, sys
missing = []
for name in ("torch", "torchvision", "numpy", "pandas", "matplotlib", "tqdm", "PIL", "pytest"):  # what the steps import
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
if missing:
    raise SystemExit(f"gpu_check: {', '.join(missing)} cannot be imported by {sys.executable}; install them "
                     "(pip install -r requirements-test.txt) or set GPU_CHECK_PYTHON")
import torch, torchvision
versions = f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}"
if os.environ["DRY"] == "1":
    print(f"dry run on the CPU, {versions}")
    raise SystemExit
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device visible to torch; nothing to check")
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {versions}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

# step NAME SECONDS ARGS...: "$PY" ARGS with a time limit, output shown and kept in $OUT/NAME.txt; a time-out or
# another failure is written at its end ("gpu_check: ..."), where the summary finds it
step() {
    local name=$1 seconds=$2 rc
    shift 2
    timeout "$(limit $((seconds * SCALE)))" "$PY" "$@" 2>&1 | tee "$OUT/$name.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ]; then
        echo "gpu_check: $name timed out" | tee -a "$OUT/$name.txt"
    elif [ "$rc" -ne 0 ]; then
        echo "gpu_check: $name exited with status $rc" | tee -a "$OUT/$name.txt"
    fi
}

# 1. the CUDA tests (each runs its entry point as a subprocess on GPU 0), 2. the resumes, evaluations, 2 processes
part tests && step cuda_tests 180 -m pytest -q -m cuda tests/test_cuda.py -rA --durations=0 --junitxml="$OUT/cuda_tests.xml"
part resume && step cuda_resume_tests 240 -m pytest -q -m cuda tests/test_cuda_resume.py -rA -s --durations=0 \
    --junitxml="$OUT/cuda_resume_tests.xml"

# 3. the benchmarks, each with a time limit
if part bench; then
step bench_data_moco 60 bench/bench_data.py --pipeline moco "${SIZE[@]}" "${E2E[@]}"
step bench_data_simclr 20 bench/bench_data.py --pipeline simclr "${SIZE[@]}" --e2e-steps 0
step bench_data_swav 20 bench/bench_data.py --pipeline swav "${SIZE[@]}" --e2e-steps 0
step bench_moco_cifar 30 bench/bench_moco_cifar.py "${MOCO[@]}"
step bench_samix 30 bench/bench_samix.py "${SAMIX[@]}"
for b in bench/*.py; do  # benchmarks added later, with their defaults
    case "$b" in bench/bench_data.py|bench/bench_moco_cifar.py|bench/bench_samix.py) continue ;; esac
    step "$(basename "$b" .py)" 30 "$b"
done
fi

# one summary table
"$PY" - "$OUT" "$start" <<'EOF' | tee "$OUT/summary.txt"
import glob, os, re, sys, time
import xml.etree.ElementTree as ET
out, start = sys.argv[1], int(sys.argv[2])
rows = []
for name in ("cuda_tests", "cuda_resume_tests"):
    xml = os.path.join(out, f"{name}.xml")
    if not os.path.isfile(os.path.join(out, f"{name}.txt")):
        continue  # a part GPU_CHECK_ONLY left out
    if os.path.isfile(xml):
        for case in ET.parse(xml).getroot().iter("testcase"):
            status = "FAIL" if case.find("failure") is not None or case.find("error") is not None else \
                "skip" if case.find("skipped") is not None else "pass"
            why = case.find("skipped").get("message", "")[:100] if status == "skip" else ""
            rows.append((f"test {case.get('name')}", status, f"{float(case.get('time', 0)):.1f} s {why}".strip()))
    else:
        rows.append((name, "FAIL", "no junit file (pytest did not run)"))
    log = os.path.join(out, f"{name}.txt")
    failed = [ln for ln in open(log).read().splitlines() if ln.startswith("gpu_check:")] if os.path.isfile(log) else []
    if any("timed out" in ln for ln in failed):
        rows.append((name, "FAIL", failed[-1]))  # the tests that did not run are missing from the table
    # the resume comparisons print whether the resumed run was bit-exact
    if os.path.isfile(log):
        rows += [(name, "", ln.strip().lstrip(".")) for ln in open(log).read().splitlines()
                 if ": the resumed run is " in ln]
keys = ("device / PIL", "epoch-time ratio", "training step / device data path", "PIL path", "pil ", "device ",
        "Un-Mix single encoding", "Un-Mix two passes", "single encoding", "step time", "NaN guard", "samix /",
        "automix /")
for f in sorted(glob.glob(os.path.join(out, "bench_*.txt"))):
    name = os.path.basename(f)[:-4]
    text = open(f).read()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(keys) or "ms/step" in ln]
    if "Traceback" in text or "gpu_check:" in text or not lines:
        rows.append((name, "FAIL", (text.strip().splitlines() or ["no output"])[-1][:100]))
    for ln in lines:
        rows.append((name, "", re.sub(r"\s+", " ", ln)))
print(f"\n## GPU check ({open(os.path.join(out, 'device.txt')).read().strip()}), {time.time() - start:.0f} s\n")
print("| what | status | result |\n| --- | --- | --- |")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
fails = sum(r[1] == "FAIL" for r in rows)
print(f"\n{fails} failure(s)")
sys.exit(1 if fails else 0)
EOF
status=${PIPESTATUS[0]}
if [ "${GPU_CHECK_PACK:-0}" = 1 ]; then  # only the files this check wrote, nothing else in $OUT
    (cd "$OUT" && logs=(device.txt cuda_*.txt cuda_*.xml bench_*.txt) \
        && tar czf logs.tar.gz --ignore-failed-read -- "${logs[@]}" 2>/dev/null && rm -f -- "${logs[@]}")
fi
exit "$status"
