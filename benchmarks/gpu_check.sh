#!/usr/bin/env bash
# The checks that need a GPU, in one go: meant to finish in under 5 minutes on one GPU machine
# (torch and torchvision installed, relssl installed or importable from src/, no network).
#
#   bash benchmarks/gpu_check.sh
#
# Stages: the device (nvidia-smi and torch's view), the CUDA tests, a bf16 + channels_last
# smoke training, a streamed training with JPEGs decoded on the GPU, a 2-process NCCL training and benchmarks/ddp_scaling.py (only with 2 or more
# GPUs), and benchmarks/train_throughput.py on the GPU. Each stage prints a header and its wall
# time; a failing stage does not stop the later ones, and the script exits non-zero at the end if
# any failed. Without a CUDA device the GPU stages print "skipped: no CUDA device" and only the
# quick (smoke) mode of train_throughput.py runs, on the CPU (~30 s on 2 cores).
set -euo pipefail

cd "$(dirname "$0")/.."
if ! python3 -c "import relssl" 2>/dev/null; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
TMP=$(mktemp -d -t relssl-gpu-check-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    CUDA=1
    GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
else
    CUDA=0
    GPUS=0
fi
CPUS=$(nproc)
WORKERS=$((CPUS < 16 ? CPUS : 16))  # DataLoader workers for train_throughput.py: its steps grow with them

PASSED=()
FAILED=()
SKIPPED=()
START=$SECONDS

# stage NAME NEEDS LIMIT_S FUNCTION: run FUNCTION under a time limit, unless NEEDS (none, cuda,
# 2gpus) is missing. FUNCTION runs in its own `bash -euo pipefail` (timeout needs a program, and
# there `set -e` holds: in a function whose status is tested bash would ignore it).
stage() {
    local name=$1 needs=$2 limit=$3 fn=$4 begin=$SECONDS rc=0
    echo
    echo "=== $name ==="
    if [[ $needs != none && $CUDA == 0 ]]; then
        echo "skipped: no CUDA device"
        SKIPPED+=("$name")
        return 0
    fi
    if [[ $needs == 2gpus && $GPUS -lt 2 ]]; then
        echo "skipped: needs 2 GPUs, this machine has $GPUS"
        SKIPPED+=("$name")
        return 0
    fi
    # set -x: each command is printed (with a leading +) before it runs
    timeout --kill-after=10 "$limit" bash -c "$(declare -f "$fn"); $(declare -p TMP WORKERS); set -euxo pipefail; $fn" \
        || rc=$?
    if ((rc == 0)); then
        echo "--- $name: ok, $((SECONDS - begin)) s"
        PASSED+=("$name")
    else
        local why="exit $rc"
        ((rc == 124 || rc == 137)) && why="ran past ${limit} s"
        echo "--- $name: FAILED ($why), $((SECONDS - begin)) s"
        FAILED+=("$name")
    fi
}

device_info() {
    nvidia-smi --query-gpu=name,memory.total --format=csv
    python3 -c '
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{torch.cuda.device_count()} device(s)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
'
}

cuda_tests() {
    python3 -m pytest -q -p no:cacheprovider tests -k "cuda or gpu"
}

amp_smoke() {
    python3 -m relssl train --max-steps 20 --device cuda --no-progress --set train.amp=bf16 \
        --set train.channels_last=on --set eval.linear=false --runs-dir "$TMP/amp"
}

gpu_decode() {
    # the streaming reader with JPEGs decoded on the GPU (data.decode=gpu), on 96 generated photos
    python3 -c '
import sys, numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 32), ("test", 16)):
    for c in range(2):
        folder = Path(sys.argv[1]) / split / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(n):
            h, w = rng.integers(300, 500, 2)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
' "$TMP/photos"
    python3 -m relssl train --dataset imagefolder --data-root "$TMP/photos" --method simclr --backbone resnet18 \
        --max-steps 5 --batch-size 32 --device cuda --no-progress --set data.stream=true --set data.decode=gpu \
        --set eval.epochs=2 --runs-dir "$TMP/decode"
}

nccl_train() {
    torchrun --standalone --nproc_per_node 2 -m relssl train --max-steps 20 --no-progress \
        --set train.backend=nccl --set eval.linear=false --runs-dir "$TMP/nccl"
}

nccl_scaling() {
    python3 benchmarks/ddp_scaling.py --backend nccl --device cuda
}

throughput_gpu() {
    python3 benchmarks/train_throughput.py --device cuda --workers "$WORKERS"
}

throughput_cpu_quick() {
    python3 benchmarks/train_throughput.py --device cpu --quick
}

stage device cuda 60 device_info
stage cuda-tests cuda 150 cuda_tests
stage bf16-channels-last-training cuda 120 amp_smoke
stage gpu-decode-streaming cuda 120 gpu_decode
stage nccl-training 2gpus 150 nccl_train
stage nccl-ddp-scaling 2gpus 150 nccl_scaling
if ((CUDA)); then
    stage train-throughput-cuda cuda 270 throughput_gpu  # ~2-3 min estimated on 16 cores + 1 GPU
else
    stage train-throughput-quick-cpu none 120 throughput_cpu_quick  # ~30 s on 2 cores
fi

echo
echo "=== summary: $((SECONDS - START)) s ==="
echo "passed:  ${PASSED[*]:-none}"
echo "skipped: ${SKIPPED[*]:-none}"
echo "failed:  ${FAILED[*]:-none}"
((${#FAILED[@]} == 0))
