"""What an ``index`` run that finds nothing to do costs, against another checkout of
dreamsearch in the same run (e.g. the commit before a change to the diff).

A folder of ``--files`` small PNGs (a few hundred distinct pictures, the rest byte copies,
so the first run is quick) is indexed once by each checkout into its own library with the
tiny pipeline model (random weights, official layout). Then each checkout runs the no-op
``index_folders`` ``--repeat`` times, alternating, each in a fresh process; the time is
that of the call alone (imports and interpreter start excluded), page cache warm.

    git worktree add /tmp/before HEAD~3
    python benchmarks/noop_run.py --files 50000 --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.index_throughput import machine  # noqa: E402
from tests.helpers.images import photo_like  # noqa: E402
from tests.helpers.official_layout import write_tiny_cache  # noqa: E402

#: Run in a child with the checkout first on ``sys.path``: index, then print the seconds.
CHILD = """
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import PendingModel
library, folder, weights = sys.argv[1:4]
model = PendingModel("dreamsim-dino", weights_dir=weights, device="cpu")
started = time.perf_counter()
report = index_folders(LibraryLayout.prepare(library), [folder], [model], IndexOptions(workers=1))
print(json.dumps({"seconds": time.perf_counter() - started, **report.summary()}))
"""


def make_folder(folder: Path, files: int, distinct: int) -> None:
    """``files`` PNGs in folders of 1,000: ``distinct`` pictures, the rest byte copies."""
    sources = []
    for i in range(distinct):
        path = folder / f"{i // 1000:03d}" / f"img{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo_like(48, 32, i).save(path)
        sources.append(path)
    for i in range(distinct, files):
        path = folder / f"{i // 1000:03d}" / f"img{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[i % distinct], path)


def run(checkout: Path, library: Path, folder: Path, weights: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(library), str(folder), str(weights)],
        capture_output=True,
        text=True,
        cwd=checkout,
        env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--distinct", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of dreamsearch")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_folder(work / "photos", args.files, args.distinct)
        weights = write_tiny_cache(work / "weights")
        checkouts = {"baseline": args.baseline.resolve(), "this": ROOT}
        for name, checkout in checkouts.items():
            first = run(checkout, work / f"lib-{name}", work / "photos", weights)
            print(f"{name}: first run {first['seconds']:.1f} s (found {first['found']}, embedded {first['embedded']})")
        times: dict[str, list[float]] = {name: [] for name in checkouts}
        for _ in range(args.repeat):
            for name, checkout in checkouts.items():
                report = run(checkout, work / f"lib-{name}", work / "photos", weights)
                assert report["unchanged"] == args.files and report["read"] == 0, report
                times[name].append(report["seconds"])
        for name, seconds in times.items():
            median = statistics.median(seconds)
            print(
                f"{name}: no-op run of {args.files} files: median {median:.2f} s "
                f"({1e6 * median / args.files:.1f} µs per file; runs {', '.join(f'{s:.2f}' for s in seconds)})"
            )
        ratio = statistics.median(times["this"]) / statistics.median(times["baseline"])
        print(f"this / baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
