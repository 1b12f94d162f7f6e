#!/bin/bash
# Every GPU measurement in one command, for a session that has a GPU (about 12 minutes on an H100):
#   bash benchmarks/gpu.sh [OUT_DIR]
# 1. the test suite on the GPU machine (CUDA-only breakage hides from CPU tests);
# 2. AdaptSegNet at full size (DeepLabv2-ResNet101, 1280x720 + 1024x512): fp32 / bf16, channels_last
#    off / on, then bf16 + channels_last with torch.compile;
# 3. loader throughput per worker (originals vs prepared copy) and AdaptSegNet it/s with 0, 4, 8 workers.
# Each part writes its output to OUT_DIR (default: benchmarks/gpu-out); copy the tables into RESULTS.md.
set -u
out=${1:-benchmarks/gpu-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1
timeout 300 python -m pytest -x -p no:cacheprovider > "$out/tests.txt" 2>&1; echo "tests rc=$?" >> "$out/tests.txt"
timeout 300 python benchmarks/bench_segmentation.py --iters 10 > "$out/segmentation.md" 2> "$out/segmentation.err"
timeout 240 python benchmarks/bench_segmentation.py --precision bf16 --channels-last on --compile off,on --warmup 5 \
    > "$out/compile.md" 2> "$out/compile.err"
timeout 240 python benchmarks/bench_loading.py --frames 48 --gpu-steps 30 > "$out/loading.json" 2> "$out/loading.err"
tail -n 3 "$out"/*.txt "$out"/*.md "$out"/*.json
