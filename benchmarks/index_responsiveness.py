"""How soon ``dreamsearch index`` commits its first image, and how soon it exits after
Ctrl-C, with a model as slow as the DreamSim ensemble on two cores (issue 23).

The model is the tiny test DreamSim-DINO, slowed to ``--seconds-per-image`` by a sleep
before each real forward pass (``tests/helpers/slowed_model.py``). Each checkout given
(``--before``: an older one, e.g. ``git worktree add /tmp/before HEAD``; then this one)
indexes the same fresh folder in a real process; SIGINT is sent ``--interrupt-after``
seconds after the start. Reported per checkout: seconds from the start to the first vector
in the catalog, from SIGINT to the process's exit, the exit status and the vectors kept;
then the ratios before/after. Both include the interpreter's start and imports (~3-5 s).

``--batches`` measures instead what small model calls cost on a CPU: images/s of a real
ViT-B/16 (DreamSim-DINO, seeded random weights) at each batch size, interleaved, best of 3
(the pace's smallest steps, ``dreamsearch/indexer/pace.py``).

    python benchmarks/index_responsiveness.py --before /tmp/before
    python benchmarks/index_responsiveness.py --batches 1,2,4,8,16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.images import photo_folder  # noqa: E402
from tests.helpers.official_layout import write_tiny_cache  # noqa: E402

SLOWED_CLI = ROOT / "tests" / "helpers" / "slowed_model.py"


def vectors_in(catalog: Path) -> int:
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT count(*) FROM vectors").fetchone()[0]
    except sqlite3.Error:
        return 0


def one_run(
    checkout: Path, work: Path, weights: Path, folder: Path, seconds_per_image: float, interrupt_after: float
) -> dict:
    """Index ``folder`` with ``checkout``'s dreamsearch; SIGINT at ``interrupt_after`` s."""
    library = work / f"lib-{checkout.name}"
    command = [
        sys.executable,
        str(SLOWED_CLI),
        str(seconds_per_image),
        "index",
        str(folder),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(weights),
        "--library",
        str(library),
        "--workers",
        "1",
        "--json",
    ]
    env = os.environ | {"PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = interrupted = None
    while child.poll() is None:
        now = time.monotonic() - started
        if first is None and vectors_in(library / "catalog.sqlite") > 0:
            first = now
        if interrupted is None and now >= interrupt_after:
            child.send_signal(signal.SIGINT)
            interrupted = now
        time.sleep(0.05)
    ended = time.monotonic() - started
    stdout, stderr = child.communicate()
    summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    if first is None and vectors_in(library / "catalog.sqlite") > 0:
        first = ended  # committed in the run's last moments
    return {
        "checkout": str(checkout),
        "first_commit_s": first,
        "sigint_to_exit_s": None if interrupted is None else ended - interrupted,
        "exit": child.returncode,
        "kept": vectors_in(library / "catalog.sqlite"),
        "embedded": summary.get("embedded"),
        "stderr_tail": stderr.strip().splitlines()[-1:] if stderr else [],
    }


def batch_throughput(batches: list[int], threads: int, work: Path) -> None:
    """Print images/s of ViT-B/16 at each batch size (CPU, ``threads`` threads)."""
    import numpy as np

    from dreamsearch.models import load_model
    from dreamsearch.models.base import set_threads
    from tests.helpers.official_layout import write_official_cache

    set_threads(threads)
    write_official_cache(work, "dino_vitb16", seed=1)
    model = load_model("dreamsim-dino", weights_dir=work, device="cpu", allow_download=False)
    pixels = np.random.default_rng(0).integers(0, 256, (max(batches), 224, 224, 3), dtype=np.uint8)
    model.embed(pixels[:2])  # warm-up
    best = dict.fromkeys(batches, 0.0)
    for _round in range(3):
        for batch in batches:
            done, started = 0, time.perf_counter()
            while done < max(8, batch):
                model.embed(pixels[:batch])
                done += batch
            best[batch] = max(best[batch], done / (time.perf_counter() - started))
    for batch, rate in best.items():
        print(
            f"ViT-B/16, {threads} threads, batch {batch:>3}: {rate:.2f} images/s "
            f"({rate / max(best.values()):.0%} of the best)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="An older checkout to measure first (its repository root).")
    parser.add_argument("--seconds-per-image", type=float, default=5.0, help="0.2 images/s: the ensemble, 2 cores")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--interrupt-after", type=float, default=15.0)
    parser.add_argument("--batches", help="Measure ViT-B/16 images/s at these batch sizes instead (e.g. 1,2,4,8,16).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for --batches")
    args = parser.parse_args()
    if args.batches:
        with tempfile.TemporaryDirectory() as scratch:
            batch_throughput([int(b) for b in args.batches.split(",")], args.threads, Path(scratch))
        return
    print(
        f"cpu: {os.cpu_count()} cores; model slowed to {args.seconds_per_image} s/image; {args.images} images; "
        f"SIGINT {args.interrupt_after} s after the start"
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        weights = write_tiny_cache(work / "weights")
        folder = photo_folder(work / "photos", args.images, (160, 120), 1, "p{:03d}.jpg")
        results = []
        for checkout in [c for c in (args.before, ROOT) if c is not None]:
            results.append(
                one_run(checkout.resolve(), work, weights, folder, args.seconds_per_image, args.interrupt_after)
            )
            print(json.dumps(results[-1]))
    if len(results) == 2:
        before, after = results
        for key in ("first_commit_s", "sigint_to_exit_s"):
            if before[key] and after[key]:
                print(
                    f"{key}: before {before[key]:.1f} s, after {after[key]:.1f} s, before/after "
                    f"{before[key] / after[key]:.1f}x"
                )


if __name__ == "__main__":
    main()
