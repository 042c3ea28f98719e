"""CPU time and wall time of embedding under OpenMP's two wait policies, quiet and loaded.

torch's OpenMP threads spin while they wait for the next parallel region (libgomp's
``ACTIVE`` default, for a while). On a busy machine the spinning threads take the cores
the working ones need: issue 23 measured one image at 1.6-1.9 CPU s and 12-16 s wall under
load, 0.27-0.36 CPU s with ``OMP_WAIT_POLICY=PASSIVE``. dreamsearch now sets ``PASSIVE``
unless the environment says otherwise (``dreamsearch/__init__.py``); this measures both,
each in its own process (the policy is read once, when OpenMP starts), alternated.

Each case embeds ``--images`` random 224 px pictures one at a time and in batches of 8
with dreamsim-dino (seeded random weights in the official layout) on ``--threads``
threads. ``--burners N`` runs N busy processes meanwhile (the "loaded" case).

    python benchmarks/omp_wait_policy.py --rounds 3 --burners 0
    python benchmarks/omp_wait_policy.py --rounds 3 --burners 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(weights: str, images: int, threads: int) -> None:
    import numpy as np

    from dreamsearch.models import load_model
    from dreamsearch.models.base import set_threads

    set_threads(threads)
    model = load_model("dreamsim-dino", weights_dir=Path(weights), device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    model.embed(pixels[:1])  # warm-up
    result = {}
    for batch in (1, 8):
        usage, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for start in range(0, images, batch):
            model.embed(pixels[: min(batch, images - start)])
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        result[batch] = (cpu / images, (time.perf_counter() - began) / images)
    print(json.dumps(result))


def burn() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burners", type=int, default=0, help="busy processes meanwhile (the loaded case)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return

    from benchmarks.index_throughput import scratch_dir
    from tests.helpers.official_layout import write_official_cache

    weights = scratch_dir("dreamsearch-omp-") / "weights"
    write_official_cache(weights, "dino_vitb16", seed=3)
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
    for burner in burners:
        burner.start()
    print(
        f"{os.cpu_count()} cores, {args.threads} threads, {args.burners} busy processes, "
        f"load average {os.getloadavg()[0]:.1f}; per image: CPU s / wall s"
    )
    totals: dict[str, list[dict]] = {"ACTIVE": [], "PASSIVE": []}
    try:
        for round_ in range(args.rounds):
            for policy in totals:
                command = [sys.executable, __file__, "--child", str(weights), str(args.images), str(args.threads)]
                out = subprocess.run(
                    command, capture_output=True, text=True, check=True, env={**os.environ, "OMP_WAIT_POLICY": policy}
                ).stdout
                figures = json.loads(out.splitlines()[-1])
                totals[policy].append(figures)
                print(
                    f"round {round_ + 1} {policy:7s} "
                    + "  ".join(f"batch {b}: {cpu:.3f} / {wall:.3f}" for b, (cpu, wall) in figures.items()),
                    flush=True,
                )
    finally:
        for burner in burners:
            burner.terminate()
    for batch in ("1", "8"):
        best = {p: min(run[batch][1] for run in runs) for p, runs in totals.items()}
        cpu = {p: min(run[batch][0] for run in runs) for p, runs in totals.items()}
        print(
            f"batch {batch}: PASSIVE/ACTIVE best wall {best['PASSIVE'] / best['ACTIVE']:.2f}x, "
            f"best CPU {cpu['PASSIVE'] / cpu['ACTIVE']:.2f}x"
        )


if __name__ == "__main__":
    main()
