"""End-to-end indexing speed: ``dreamsearch index`` vs the naive loop the official
DreamSim README suggests (open, preprocess, embed one image at a time), same model and
seeded random weights, on a generated corpus of photo-sized JPEGs. Also: decode-only
images/s with and without JPEG draft, and the model alone (pure embedding), so it is
visible whether decoding hides behind the model.

    python benchmarks/index_throughput.py --images 200              # CPU
    python benchmarks/index_throughput.py --images 300 --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def make_photo(args: tuple[Path, int, int, int]) -> None:
    """A 12 MP picture with smooth structure and sensor-like noise, saved at quality 90."""
    path, width, height, seed = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 64, width // 64, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_corpus(folder: Path, count: int, width: int, height: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo{i:04d}.jpg" for i in range(count)]
    todo = [(p, width, height, i) for i, p in enumerate(paths) if not p.exists()]
    with multiprocessing.get_context("spawn").Pool() as pool:
        pool.map(make_photo, todo)
    return paths


def rate(count: int, seconds: float) -> float:
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--naive-images", type=int, default=60, help="images for the (slow) naive loop")
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the corpus and weights here between runs")
    args = parser.parse_args()

    import torch

    from dreamsearch.images import decode
    from dreamsearch.indexer import IndexOptions, index_folders
    from dreamsearch.library import LibraryFolder
    from dreamsearch.models import load_model
    from tests.models.official_layout import official_model, write_official_cache

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dreamsearch-index-bench-"))
    width, height = map(int, args.size.split("x"))
    began = time.perf_counter()
    paths = make_corpus(work / "photos", args.images, width, height)
    megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(f"corpus: {len(paths)} JPEGs {width}x{height}, {megabytes:.1f} MB each "
          f"(made in {time.perf_counter() - began:.0f} s); device {device}, {os.cpu_count()} cores")
    weights = work / "weights"
    write_official_cache(weights, "dino_vitb16", seed=3)
    ours = load_model("dreamsim-dino", weights_dir=weights, device=device)
    spec = ours.preprocess_spec

    sample = paths[: min(40, len(paths))]
    for label, draft in (("decode+resize, full decode", 0), ("decode+resize, JPEG draft", spec.draft_size)):
        began = time.perf_counter()
        for path in sample:
            spec(decode(path, draft_size=draft).image)
        print(f"{label:<34}{rate(len(sample), time.perf_counter() - began):8.2f} img/s (one core)")

    pixels = np.stack([spec(decode(p, draft_size=spec.draft_size).image) for p in paths[: args.batch_size]])
    ours.embed(pixels)  # warm-up
    rounds = max(2, 256 // args.batch_size) if device == "cuda" else 2
    began = time.perf_counter()
    for _ in range(rounds):
        ours.embed(pixels)
    if device == "cuda":
        torch.cuda.synchronize()
    pure = rate(rounds * len(pixels), time.perf_counter() - began)
    print(f"{'pure embedding (batch ' + str(args.batch_size) + ')':<34}{pure:8.2f} img/s")

    options = IndexOptions(batch_size=args.batch_size, **({} if args.workers is None else {"workers": args.workers}))
    library = LibraryFolder.prepare(Path(tempfile.mkdtemp(prefix="lib-", dir=work)))
    utilisation = _GpuSampler() if device == "cuda" else None
    began = time.perf_counter()
    report = index_folders(library, [work / "photos"], [ours], options)
    seconds = time.perf_counter() - began
    end_to_end = rate(report.embedded, seconds)
    gpu = f", GPU busy {utilisation.stop():.0f}% of the time" if utilisation else ""
    print(f"{'dreamsearch index (end to end)':<34}{end_to_end:8.2f} img/s ({report.embedded} images, "
          f"{options.workers} decode workers{gpu})")

    official, preprocess = official_model(weights, "dino_vitb16", device)
    naive_paths = paths[: args.naive_images]
    with torch.no_grad():
        official.embed(preprocess(Image.open(naive_paths[0])).to(device))
        began = time.perf_counter()
        for path in naive_paths:
            official.embed(preprocess(Image.open(path)).to(device))
        if device == "cuda":
            torch.cuda.synchronize()
    naive = rate(len(naive_paths), time.perf_counter() - began)
    print(f"{'naive loop, official package':<34}{naive:8.2f} img/s ({len(naive_paths)} images)")
    print(f"\nend to end / naive loop:       {end_to_end / naive:5.2f}x  (target >= 1.5x)")
    print(f"end to end / pure embedding:   {end_to_end / pure:5.2f}   (target >= 0.90: decoding hidden)")


class _GpuSampler:
    """Samples GPU utilisation every 0.2 s in a thread (nvidia-ml via torch)."""

    def __init__(self) -> None:
        import threading

        import torch

        self.samples: list[int] = []
        self.done = threading.Event()

        def loop():
            while not self.done.wait(0.2):
                try:
                    self.samples.append(torch.cuda.utilization())
                except Exception:  # no NVML on this machine
                    return

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return float(np.mean(self.samples)) if self.samples else float("nan")


if __name__ == "__main__":
    main()
