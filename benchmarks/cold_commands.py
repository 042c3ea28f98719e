"""How fast commands that need no model answer from a cold start, against ``python -c
"import torch"`` measured the same way in the same run (the floor those commands used to
pay before issue 23: `status` took 19-21 s on a user's 2 cores).

A library of ``--photos`` small JPEGs (every tenth one also as a byte copy) is indexed
once with the tiny pipeline model (random weights, official layout). Then each command
runs ``--repeat`` times in a fresh interpreter (``python -m dreamsearch ...``), commands
interleaved, page cache warm: wall time from process start to exit, and the process's
peak RSS (``wait4``; a child's count starts from its launcher's, so the library is made in
a child process and this one imports no more than the standard library: ``python -c pass``
shows the floor). ``forget`` and ``index`` run on a fresh copy of the library each time.
Target: each under 1 s on an idle machine; the load average is printed because machines
are shared.

    python benchmarks/cold_commands.py --photos 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "dreamsim-dino"
#: The tiny model's distinct photos lie above 6e-5 of each other (tests/test_duplicates.py).
TINY_DISTANCE = "0.00002"


def measure(argv: list[str]) -> tuple[float, float, int, str]:
    """``(wall s, peak RSS MiB, exit status, first line of stderr)`` of one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        first = (err.read().decode(errors="replace").strip().splitlines() or [""])[0]
    return wall, usage.ru_maxrss / 1024, process.returncode, first


def make_library(work: Path, photos: int) -> None:
    """Run as ``--setup WORK``, in a child: ``WORK/{photos,weights,library}``, and the machine line."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.index_throughput import machine
    from tests.helpers.images import photo_like
    from tests.helpers.official_layout import write_tiny_cache

    print(f"machine: {machine()}")
    folder = work / "photos"
    folder.mkdir()
    for i in range(photos):
        photo_like(64, 48, i).save(folder / f"img{i:05d}.jpg", quality=90)
        if i % 10 == 0:
            shutil.copyfile(folder / f"img{i:05d}.jpg", folder / f"copy{i:05d}.jpg")
    weights = write_tiny_cache(work / "weights")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamsearch",
            "index",
            str(folder),
            "-m",
            MODEL,
            "--weights-dir",
            str(weights),
            "--library",
            str(work / "library"),
            "--quiet",
        ],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", DREAMSEARCH_OFFLINE="1")
    if args.setup:
        make_library(args.setup, args.photos)
        return
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, __file__, "--setup", str(work), "--photos", str(args.photos)], check=True)
        photos, weights, library = work / "photos", work / "weights", work / "library"
        lib = ["--library", str(library)]
        cli = [sys.executable, "-m", "dreamsearch"]
        cases = {
            'python -c "import torch" (reference)': [sys.executable, "-c", "import torch"],
            'python -c "pass" (the floor)': [sys.executable, "-c", "pass"],
            "status": [*cli, "status", *lib],
            "forget (a copy of the library)": [*cli, "forget", str(photos), "--library", str(work / "copy")],
            "duplicates": [*cli, "duplicates", "-m", MODEL, "--max-distance", TINY_DISTANCE, *lib],
            "query --like": [*cli, "query", "--like", str(photos / "img00001.jpg"), "-m", MODEL, *lib],
            "models list": [*cli, "models", "list", "--weights-dir", str(weights)],
            "index, nothing new, --threads 2": [
                *cli,
                "index",
                str(photos),
                "-m",
                MODEL,
                "--weights-dir",
                str(weights),
                "--threads",
                "2",
                "--quiet",
                "--library",
                str(work / "copy"),
            ],
            "error: missing file": [*cli, "query", str(photos / "nope.jpg"), *lib],
            "error: folder as image": [*cli, "query", str(photos), *lib],
            "error: -k 0": [*cli, "query", "-k", "0", str(photos / "img00001.jpg"), *lib],
        }
        on_copy = {"forget (a copy of the library)", "index, nothing new, --threads 2"}  # they write
        expected = {"error: missing file": 1, "error: folder as image": 1, "error: -k 0": 1}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, argv in cases.items():
                if name in on_copy:
                    shutil.rmtree(work / "copy", ignore_errors=True)
                    shutil.copytree(library, work / "copy")
                wall, rss, code, first = measure(argv)
                if code != expected.get(name, 0):
                    raise SystemExit(f"{name}: exit status {code}: {first}")
                runs[name].append((wall, rss))
        print(
            f"library: {args.photos} photos + {len(range(0, args.photos, 10))} byte copies, model {MODEL} "
            f"(tiny, random weights); {args.repeat} runs each, interleaved"
        )
        reference = statistics.median(w for w, _ in runs[next(iter(cases))])
        print(f"{'command':<38} {'median s':>9} {'min s':>7} {'peak RSS':>10} {'vs import torch':>16}")
        for name, measured in runs.items():
            walls = [w for w, _ in measured]
            print(
                f"{name:<38} {statistics.median(walls):>9.2f} {min(walls):>7.2f} "
                f"{max(r for _, r in measured):>7.0f} MiB {statistics.median(walls) / reference:>15.2f}x"
            )
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
