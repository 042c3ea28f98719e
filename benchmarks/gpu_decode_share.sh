#!/usr/bin/env bash
# How the batched GPU JPEG decoder and the CPU reading threads share a run's decoding
# (device_decode.CALLS_WAITING, local_engine.BATCHES_AHEAD), on a GPU machine set up as for
# benchmarks/gpu_check.sh (wheels in .whl/). Each case is benchmarks/index_throughput.py's
# "shared" end-to-end case on the same 12 MP corpus; the product's settings run last, under
# py-spy (carried as .whl/py-spy; --idle --threads, every thread's samples, raw stacks in
# $OUT/profile_shared.txt.gz) when it can attach, so where the model thread and the main
# thread wait shows.
#   bash benchmarks/gpu_decode_share.sh [CAMERA_JPEGS]
set -uo pipefail
out="${OUT:-/tmp/gpu-decode-share}"
mkdir -p "$out"
camera="${1:-1500}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/.whl/site:$PWD" HF_HUB_OFFLINE=1 DREAMSEARCH_OFFLINE=1 PYTHONUNBUFFERED=1
work=/tmp/decode-share
bench=(python3 benchmarks/index_throughput.py --work-dir "$work" --device cuda --gpu-decode --models dreamsim
    --camera "$camera" --mixed 0 --rss '' --batch-size 128 --workers 15 --naive 0 --decode-cases shared)
for setting in "--calls-waiting 2" "--calls-waiting 0.5" "--batches-ahead 4"; do
    # shellcheck disable=SC2086
    timeout 150 "${bench[@]}" $setting 2>&1 | grep -E "camera|pure" | tee -a "$out/cases.txt"
done
chmod +x .whl/py-spy 2>/dev/null
timeout 170 .whl/py-spy record --idle --threads --nonblocking --subprocesses -r 50 -f raw \
    -o "$out/profile_shared.txt" -- "${bench[@]}" >"$out/profiled.log" 2>&1
grep -E "camera|pure|py-spy|rror" "$out/profiled.log" | tee -a "$out/cases.txt"
if ! grep -q "end to end" "$out/profiled.log"; then
    echo "py-spy failed: the product's settings without it" | tee -a "$out/cases.txt"
    timeout 150 "${bench[@]}" 2>&1 | grep -E "camera|pure" | tee -a "$out/cases.txt"
fi
gzip -f "$out/profile_shared.txt" 2>/dev/null
ls -la "$out"
