#!/bin/bash
# Every GPU measurement in one command, for a session that has a GPU (at most 10 minutes, each part under its own limit):
#   bash benchmarks/gpu.sh [OUT_DIR]
# 1. the test suite on the GPU machine (CUDA-only breakage hides from CPU tests): spread over the
#    machine's cores with pytest-xdist where it is installed, then the failures re-run one at a time
#    (a failure that passes alone is the parallel run's, not the code's);
# 2. AdaptSegNet at full size (DeepLabv2-ResNet101, 1280x720 + 1024x512): fp32 / bf16, channels_last
#    off / on, again with the deterministic kernels a run asks for, then bf16 + channels_last with
#    torch.compile;
# 3. loader throughput per worker (originals vs prepared copy) and AdaptSegNet it/s with 0, 4, 8 workers.
# Each part writes its output to OUT_DIR (default: benchmarks/gpu-out) under its own time limit;
# copy the tables into RESULTS.md.
set -u
out=${1:-benchmarks/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } > "$out/device.txt" 2>&1
args=(-q -p no:warnings -rf)
python3 -c "import mlflow" 2>/dev/null || args+=(-k "not mlflow")  # an optional extra the image may lack
par=()
python3 -c "import xdist" 2>/dev/null && par=(-n $(( $(nproc) > 2 ? $(nproc) - 1 : 1 )) --tb=line)
OMP_NUM_THREADS=1 timeout 130 python3 -m pytest "${args[@]}" "${par[@]}" > "$out/tests.txt" 2>&1  # H200, 15 workers: 104 s
rc=$?; echo "tests rc=$rc" >> "$out/tests.txt"
if [ ${#par[@]} -gt 0 ] && [ $rc = 1 ]; then  # finished with failures: each again alone
    OMP_NUM_THREADS=1 timeout 60 python3 -m pytest "${args[@]}" --lf > "$out/tests-rerun.txt" 2>&1
    echo "rerun rc=$?" >> "$out/tests-rerun.txt"
fi
timeout 90 python3 benchmarks/bench_segmentation.py --iters 10 > "$out/segmentation.md" 2>> "$out/errors.txt"
timeout 60 python3 benchmarks/bench_segmentation.py --iters 10 --channels-last off --deterministic \
    > "$out/deterministic.md" 2>> "$out/errors.txt"  # what a run's repeatable kernels cost
timeout 100 python3 benchmarks/bench_loading.py --frames 16 --gpu-steps 30 > "$out/loading.json" 2>> "$out/errors.txt"
timeout 150 python3 benchmarks/bench_segmentation.py --precision bf16 --channels-last on --compile off,on --warmup 5 \
    > "$out/compile.md" 2>> "$out/errors.txt"
tail -n 3 "$out"/*.txt "$out"/*.md "$out"/*.json
