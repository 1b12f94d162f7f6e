#!/bin/bash
# Domain generalisation in DomainBed's own setting for 28x28 digits, for a session with a GPU
# (issues 20 and 23: does DomainBed's MMD stay alive, and how far above chance, on DomainBed's network?):
#   bash benchmarks/gpu_dg.sh [OUT_DIR]
# DomainBed's featurizer for 28x28 images (MNIST_CNN: --backbone domainbed-cnn), its Adam (the
# DomainBed methods' default), its 5,000 steps, 3 seeds, each digits4 domain held out in turn: mmd
# and causirl-mmd (on the DANN digit CNN they die on 4 and 2 of 12 runs), beside the same network,
# optimiser and per-domain batches without a penalty (`mmd -H mmd_gamma=0`, DomainBed's ERM).
# 36 runs; on a 2-core CPU one run takes about 10 minutes at 1,000 steps (2 threads), 77 at 5,000 (1 thread).
# Environment: STEPS (5000), SEEDS (3), JOBS (the cores less one), ALGOS (mmd,causirl-mmd), LIMIT
# (seconds for the two sweeps, which run side by side; 400: the tables come from whatever finished).
# Writes leaderboard.md (per seed, both folders) and records.tar.gz (`dabench export` of the runs:
# copy it under benchmarks/records/ and the table into RESULTS.md).
set -u
out=${1:-benchmarks/gpu-out}
steps=${STEPS:-5000}
seeds=${SEEDS:-3}
jobs=${JOBS:-$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))}
algos=${ALGOS:-mmd,causirl-mmd}
mkdir -p "$out"
limit=${LIMIT:-400}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--dg digits4 --backbone domainbed-cnn --steps "$steps" --seeds "$seeds")
n_algos=$(( $(tr -cd , <<< "$algos" | wc -c) + 1 ))
jobs_erm=$(( jobs / (n_algos + 1) > 0 ? jobs / (n_algos + 1) : 1 ))  # the cores shared as the runs are
export OMP_NUM_THREADS=1  # one thread a process: the jobs share the cores
# the two sweeps side by side, each under the limit
timeout "$limit" dabench sweep --algos "$algos" "${common[@]}" --jobs $(( jobs > jobs_erm ? jobs - jobs_erm : 1 )) \
    --out "$work/dg" > "$out/dg-sweep.txt" 2>&1 &
timeout "$limit" dabench sweep --algos mmd -H mmd_gamma=0 "${common[@]}" --jobs "$jobs_erm" \
    --out "$work/dg-erm" > "$out/dg-erm-sweep.txt" 2>&1 &
wait
mkdir -p "$work/records"  # the tar below is made even when no run finished
for d in dg dg-erm; do
    echo "## $d"
    dabench leaderboard "$work/$d" --per-seed
    dabench export "$work/$d" "$work/records/$d" > /dev/null
done > "$out/leaderboard.md" 2>&1
tar -czf "$out/records.tar.gz" -C "$work/records" .
tail -n 2 "$out"/dg*-sweep.txt
