#!/usr/bin/env bash
# The fern benchmark of docs/results.md (short preset, 120-frame spiral) on one GPU machine, in the background:
#   run from the repository root, with the scene in data/fern and the TAEF2 weights in weights/taef2 (see docs/benchmark.md).
cd "$(dirname "$0")/../.."
R="relsnerf-bench"
O="--output-dir outputs/bench/fern"
D="--data data/fern --dataparser llff-data --downscale-factor 4 --taef2-weights weights/taef2 --schedule short"
step() { echo "=== $(date +%T) start: $*"; "$@" 2>&1 | grep -v -E "Warning|warn|^\s*$|c2w = |mask = |custom_(fwd|bwd)" ; echo "=== $(date +%T) end (rc ${PIPESTATUS[0]}): $*"; }
step $R train --model relsnerf-r32 $O $D
step $R train --model relsnerf-tiny $O $D
step $R train --model nerfacto $O $D
step $R evaluate --model relsnerf-r32 $O
step $R evaluate --model relsnerf-tiny $O
step $R evaluate --model nerfacto $O
step $R time $O
step $R report $O
step python3 -m relsnerf_ns.benchmark.kernels --config outputs/bench/fern/runs/relsnerf-r32/relsnerf-r32/bench/config.yml --json outputs/bench/fern/kernels_r32.json
step python3 -m relsnerf_ns.benchmark.kernels --skip-lookups --config outputs/bench/fern/runs/relsnerf-tiny/relsnerf-tiny/bench/config.yml --json outputs/bench/fern/kernels_tiny.json
tar czf fern_results.tgz -C outputs/bench/fern results benchmark.md benchmark.json kernels_r32.json kernels_tiny.json $(cd outputs/bench/fern && ls *.png 2>/dev/null)
echo "=== DONE $(date +%T)"
