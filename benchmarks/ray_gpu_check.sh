#!/usr/bin/env bash
# The Ray engine on one GPU machine, for the device tool: one GPU embed actor plus 15 CPU
# decode tasks (a Ray cluster of the machine, started by the run) against the local engine
# on the same corpus and device, with CPU decode threads and with GPU JPEG decoding.
# Needs what gpu_check.sh needs, plus ray[data] (ray, pyarrow, pandas wheels for the image's
# Python in .whl/; the ray wheel alone is close to the device tool's 64 MiB carry limit).
#   bash benchmarks/ray_gpu_check.sh [CAMERA_JPEGS]
set -uo pipefail
out="${OUT:-/tmp/ray-gpu-check}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD/.whl/site:$PWD" HF_HUB_OFFLINE=1 DREAMSEARCH_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import ray.data" || { echo "ray[data] is not importable: see this script's header"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
timeout 540 python3 benchmarks/index_throughput.py --device cuda --gpu-decode --engine ray --models dreamsim \
    --camera "${1:-1000}" --mixed 0 --rss '' --batch-size 128 --workers 15 --naive 0 \
    2>&1 | tee "$out/index_throughput_ray_gpu.txt"
