"""Embedding throughput: dreamsearch vs the official DreamSim package.

Same machine, same seeded random weights (official cache layout), same images, one run.
Prints images/s of both, the ratio ours/official, our achieved GFLOP/s against this
machine's measured matmul peak, and (on CUDA) how far autocast moves our embeddings from
float32. Decoding is excluded: both sides get the same 224×224 pixels.

    python benchmarks/embed_throughput.py --threads 2            # CPU
    python benchmarks/embed_throughput.py --device cuda          # GPU, bf16/fp16 autocast

Needs the test extra (``pip install -e '.[test]'``) for the official package.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dreamsearch.models import load_model  # noqa: E402
from dreamsearch.models.base import set_threads  # noqa: E402
from tests.models.official_layout import official_model, write_official_cache  # noqa: E402

NAMES = {"ensemble": "dreamsim", "dino_vitb16": "dreamsim-dino", "dinov2_vitb14": "dreamsim-dinov2",
         "clip_vitb32": "dreamsim-clip", "open_clip_vitb32": "dreamsim-open-clip", "synclr_vitb16": "dreamsim-synclr"}


def vit_gmacs(patch: int, image: int = 224, width: int = 768, depth: int = 12) -> float:
    """Multiply-accumulates of one full ViT forward (standard count; ViT-B/16 ≈ 17.6 G)."""
    tokens = (image // patch) ** 2 + 1
    per_block = 12 * tokens * width**2 + 2 * tokens**2 * width
    return (depth * per_block + (tokens - 1) * width * 3 * patch**2) / 1e9


def model_gflop(ours) -> float:
    return sum(2 * vit_gmacs(b.vit.cfg.patch_size) for b in ours.network.branches)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype) -> float:
    size = 4096 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 50 if device.type == "cuda" else 5
    seconds = timed(lambda: a @ b, device, repeats)
    return 2 * size**3 * repeats / seconds / 1e9


def timed(step, device: torch.device, repeats: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def images_per_second(step, batch: int, count: int, device: torch.device) -> float:
    step()  # warm-up (allocator, kernels, autotuning)
    repeats = max(1, count // batch)
    return repeats * batch / timed(step, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default="ensemble,dino_vitb16")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--images", type=int, default=0, help="images per measurement (default 32 CPU, 512 CUDA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="reuse an official-layout folder")
    args = parser.parse_args()

    set_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 for both sides
        torch.backends.cudnn.allow_tf32 = False
    count = args.images or (512 if device.type == "cuda" else 32)
    weights = args.weights_dir or Path(tempfile.mkdtemp(prefix="dreamsearch-bench-"))
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                                f", {torch.get_num_threads()} threads") + f", torch {torch.__version__}")
    peak32 = matmul_peak_gflops(device, torch.float32)
    print(f"matmul peak float32: {peak32:,.0f} GFLOP/s")
    peak16 = matmul_peak_gflops(device, torch.bfloat16) if device.type == "cuda" else None
    if peak16:
        print(f"matmul peak bfloat16: {peak16:,.0f} GFLOP/s")

    rng = np.random.default_rng(0)
    header = f"{'type':<14}{'batch':>6}{'official img/s':>16}{'ours fp32':>11}{'ratio':>7}"
    header += f"{'ours autocast':>15}{'ratio':>7}" if device.type == "cuda" else ""
    header += f"{'GFLOP/s':>10}{'of peak':>9}{'max|diff|':>11}"
    rows = [header]
    for dreamsim_type in args.types.split(","):
        write_official_cache(weights, dreamsim_type, seed=7)
        official, _ = official_model(weights, dreamsim_type)
        official = official.to(device)
        ours = load_model(NAMES[dreamsim_type], weights_dir=weights, device=str(device), allow_download=False)
        autocast_dtype, ours.autocast_dtype = ours.autocast_dtype, None
        gflop = model_gflop(ours)
        for batch in map(int, args.batch_sizes.split(",")):
            pixels = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
            tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).to(device)
            with torch.no_grad():
                expected = official.embed(tensor).float().cpu().numpy()
                official_rate = images_per_second(lambda: official.embed(tensor), batch, count, device)
            ours.autocast_dtype = None
            diff = float(np.abs(ours.embed(pixels) - expected).max())
            fp32_rate = images_per_second(lambda: ours.embed(pixels), batch, count, device)
            line = f"{dreamsim_type:<14}{batch:>6}{official_rate:>16.2f}{fp32_rate:>11.2f}{fp32_rate / official_rate:>6.2f}x"
            best_rate, best_peak = fp32_rate, peak32
            if device.type == "cuda":
                ours.autocast_dtype = autocast_dtype
                mixed = ours.embed(pixels)
                amp_rate = images_per_second(lambda: ours.embed(pixels), batch, count, device)
                cosine = float((mixed * expected).sum(axis=1).min())
                line += f"{amp_rate:>15.2f}{amp_rate / official_rate:>6.2f}x"
                best_rate, best_peak = amp_rate, peak16
                print(f"  {dreamsim_type} batch {batch}: autocast {autocast_dtype} vs float32: "
                      f"max|diff| {np.abs(mixed - expected).max():.2e}, min cosine {cosine:.6f}")
            achieved = best_rate * gflop
            line += f"{achieved:>10,.0f}{achieved / best_peak:>8.0%} {diff:>10.1e}"
            rows.append(line)
            print(line, flush=True)
        del official, ours
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
