#!/usr/bin/env bash
# The ingest pipeline's GPU checks in one go, for a GPU machine with torch and torchvision
# installed (the device tool's image: Python 3.12, torch 2.11):
#   1. the batched JPEG decoder's tests on CUDA (routing, agreement with the CPU path,
#      failures one by one, order), and the indexer's batched-decode tests;
#   2. benchmarks/index_throughput.py on CUDA, in the same run: CPU decode threads alone,
#      the batched GPU decoder taking every JPEG it can, and the batched decoder with the CPU
#      threads decoding the files that would wait for it (device_decode.CALLS_WAITING).
# What the image lacks travels as wheels in .whl/ (pip download --python-version 3.12 ...:
# faiss-cpu sqlalchemy alembic mako open_clip_torch ftfy wcwidth pillow_heif platformdirs),
# plus .whl/site/dreamsim (the pure-Python official package, for the naive-loop baseline).
#   bash benchmarks/gpu_check.sh [CAMERA_JPEGS] [MIXED_FILES] [NAIVE_IMAGES]
set -uo pipefail
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
camera="${1:-1500}"
mixed="${2:-150}"  # HEIC encoding is slow: 450 took 174 s of an H100 lease
naive="${3:-60}"  # the official package's one-at-a-time loop (0 skips it)
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD/.whl/site:$PWD" HF_HUB_OFFLINE=1 DREAMSEARCH_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
DREAMSEARCH_TEST_DECODE_DEVICE=cuda timeout 150 python3 -m pytest -q -s -p no:cacheprovider \
    tests/indexer/test_gpu_decode.py tests/indexer/test_ingest.py::test_batched_jpeg_decoding_agrees_with_the_cpu_path \
    tests/indexer/test_ingest.py::test_a_file_the_batched_decoder_fails_on_goes_to_the_cpu_and_order_is_kept \
    tests/indexer/test_ingest.py::test_while_the_device_is_behind_the_reading_threads_decode_jpegs_themselves \
    2>&1 | tee "$out/tests_cuda.txt"
timeout 420 python3 benchmarks/index_throughput.py --device cuda --gpu-decode --models dreamsim \
    --camera "$camera" --mixed "$mixed" --rss '' --batch-size 128 --workers 15 --naive "$naive" \
    2>&1 | tee "$out/index_throughput_gpu.txt"
