"""What loading the ``clip`` model costs a fresh process: dreamsearch's loader against the
one before it (open_clip's ``load_openai_model``, then its image tower), in one run.

Both sides read the same random OpenAI CLIP ViT-B/32 written as OpenAI publishes it (a
TorchScript archive of ~350 MB; page cache warm) through ``PendingModel``, and differ only
in the builder. Each load runs in a fresh process, the sides alternating ``--repeat``
times after one unmeasured warm-up each. A child reports the seconds from its first line
to a model ready to embed (imports included), the part spent importing torch and
dreamsearch, and its peak RSS (``VmHWM``: ``ru_maxrss`` would report this process's
peak, which a child inherits through fork and exec); it then embeds the same pixels, and the two sides' vectors
are compared. Last, what one ViT-B costs to build with random initialisation and on the
``meta`` device (what ``vit.load_vit`` skips).

    python benchmarks/model_load.py --repeat 3 --threads 2

Needs the test extra (``pip install -e '.[test]'``) for open_clip.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.index_throughput import machine  # noqa: E402
from tests.helpers.official_layout import write_openai_clip  # noqa: E402

#: argv: side, weights folder, threads. Prints one JSON line.
CHILD = """
import time
started = time.perf_counter()
import json, sys, warnings
import numpy as np
import torch
from dreamsearch.models import PendingModel
side, weights, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if threads:
    torch.set_num_threads(threads)
pending = PendingModel("clip", weights_dir=weights, device="cpu")
imported = time.perf_counter()
if side == "open_clip":  # the builder before: open_clip's loader, then its image tower
    import open_clip
    from dreamsearch.models.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Embedder, Normalized
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.load_openai_model(str(pending.weights_root / pending.spec.files[0].path), precision="fp32",
                                            device="cpu")
    visual = model.visual.float()
    embedder = Embedder("clip", Normalized(visual, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), visual.output_dim,
                        pending.preprocess_spec, torch.device("cpu"))
else:
    embedder = pending.load()
ready = time.perf_counter()
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
vectors = embedder.embed(pixels)
print(json.dumps({"seconds": ready - started, "imports": imported - started, "rss_mib": rss,
                  "vectors": vectors.tolist()}))
"""

SIDES = ("open_clip", "dreamsearch")


def load_once(side: str, weights: Path, threads: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, side, str(weights), str(threads)], capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def init_cost(repeat: int, threads: int) -> tuple[float, float]:
    """Best seconds to build a ViT-B/32 with random initialisation, and on ``meta``."""
    import torch

    from dreamsearch.models.vit import VisionTransformer, ViTConfig

    if threads:
        torch.set_num_threads(threads)
    cfg = ViTConfig(patch_size=32, feature="cls_proj", ln_pre=True, quick_gelu=True, proj_dim=512)
    initialised, meta = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        VisionTransformer(cfg)
        initialised.append(time.perf_counter() - started)
        started = time.perf_counter()
        with torch.device("meta"):
            VisionTransformer(cfg)
        meta.append(time.perf_counter() - started)
    return min(initialised), min(meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="model-load-") as tmp:
        weights = Path(tmp)
        write_openai_clip(weights)
        for side in SIDES:  # warm-up: page cache, the weights' sha256 cache
            load_once(side, weights, args.threads)
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        for _ in range(args.repeat):
            for side in SIDES:
                runs[side].append(load_once(side, weights, args.threads))
    for side in SIDES:
        seconds = [r["seconds"] for r in runs[side]]
        print(
            f"{side}: load to ready median {statistics.median(seconds):.2f} s "
            f"(runs {', '.join(f'{s:.2f}' for s in seconds)}; of which torch + dreamsearch imports "
            f"{statistics.median(r['imports'] for r in runs[side]):.2f} s), "
            f"peak RSS median {statistics.median(r['rss_mib'] for r in runs[side]):.0f} MiB"
        )
    before, after = (statistics.median(r["seconds"] for r in runs[s]) for s in SIDES)
    rss_before, rss_after = (statistics.median(r["rss_mib"] for r in runs[s]) for s in SIDES)
    print(f"open_clip / dreamsearch: time {before / after:.2f}x, peak RSS {rss_before / rss_after:.2f}x")
    diff = max(
        abs(a - b)
        for run_a, run_b in zip(runs["open_clip"], runs["dreamsearch"], strict=True)
        for row_a, row_b in zip(run_a["vectors"], run_b["vectors"], strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    )
    print(f"max |vector difference| between the sides: {diff:.1e}")
    initialised, meta = init_cost(args.repeat, args.threads)
    print(f"one ViT-B/32 built with random initialisation {initialised:.3f} s, on meta {meta:.4f} s")


if __name__ == "__main__":
    main()
