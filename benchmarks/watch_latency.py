"""How long a photo takes to become findable under ``dreamsearch watch``, and what the
watcher costs when nothing happens.

A real ``dreamsearch watch --json`` process follows an empty folder with the tiny pipeline
model (random weights, official layout: the model's own time is not what is measured).
Then:
- one photo at a time, ``--photos`` times: from the end of its write to the watcher's
  JSON line for the batch that committed it (printed once the run, its commit and its
  index save are done: a search from then on finds it);
- ``--burst`` photos copied in at once: the same for each file, from the end of its copy;
- idle: the watcher's CPU time (``/proc/PID/stat``) over ``--idle`` seconds of no change.
The floor is the settle time; "run" is what the index runs themselves took (the watcher's
own ``seconds``), so latency − settle − run is the watcher's overhead.

    python benchmarks/watch_latency.py --settle 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.index_throughput import machine  # noqa: E402
from tests.helpers.images import photo_like  # noqa: E402
from tests.helpers.official_layout import write_tiny_cache  # noqa: E402


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s (n={len(ordered)})"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Watch:
    """The watcher process; its JSON lines with the time each arrived."""

    def __init__(self, folder: Path, library: Path, weights: Path, settle: float) -> None:
        command = [
            sys.executable,
            "-m",
            "dreamsearch",
            "watch",
            str(folder),
            "-m",
            "dreamsim-dino",
            "--library",
            str(library),
            "--weights-dir",
            str(weights),
            "--device",
            "cpu",
            "--settle",
            str(settle),
            "--json",
            "--quiet",
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
        )
        self.batches: list[tuple[float, dict]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.batches.append((time.monotonic(), json.loads(line)))

    def added_until(self, count: int, timeout: float = 600) -> list[tuple[float, dict]]:
        deadline = time.monotonic() + timeout
        while sum(batch["added"] for _at, batch in self.batches) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the watcher did not index {count} photos: {self.batches}")
            time.sleep(0.01)
        return self.batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--photos", type=int, default=20, help="single photos, one after the other")
    parser.add_argument("--burst", type=int, default=1000, help="photos copied in at once")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measured")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        weights = write_tiny_cache(scratch / "weights")
        folder, staging = scratch / "photos", scratch / "staging"
        folder.mkdir()
        staging.mkdir()
        for i in range(args.burst):
            photo_like(160, 120, 10_000 + i).save(staging / f"b{i:05d}.jpg", quality=90)
        watch = Watch(folder, scratch / "lib", weights, args.settle)
        while not watch.batches:  # the catch-up: the watch is set up
            time.sleep(0.05)

        single, runs = [], []
        for i in range(args.photos):
            photo_like(160, 120, i).save(folder / f"p{i:03d}.jpg", quality=90)
            written = time.monotonic()
            at, batch = watch.added_until(i + 1)[-1]
            single.append(at - written)
            runs.append(batch["seconds"])
        print(
            f"1 photo at a time: {percentiles(single)}; settle {args.settle:g} s, "
            f"index run p50 {statistics.median(runs):.2f} s"
        )

        done_at = {}
        before = len(watch.batches)
        for source in sorted(staging.iterdir()):
            shutil.copyfile(source, folder / source.name)
            done_at[source.name] = time.monotonic()
        batches = watch.added_until(args.photos + args.burst)[before:]
        # Files settle in the order they were written: the j-th copied is committed by the
        # first batch whose running total of added photos passes j.
        committed, total = [], 0
        for at, batch in batches:
            total += batch["added"]
            committed.append((total, at))
        burst = [
            next(at for total, at in committed if total > j) - written for j, written in enumerate(done_at.values())
        ]
        copy_s = max(done_at.values()) - min(done_at.values())
        print(
            f"{args.burst} photos copied at once (copy took {copy_s:.2f} s): {percentiles(burst)}; "
            f"{len(batches)} batches, index runs {sum(b['seconds'] for _at, b in batches):.2f} s in all"
        )

        time.sleep(args.settle + 1)
        start_cpu, start = cpu_seconds(watch.process.pid), time.monotonic()
        time.sleep(args.idle)
        used, elapsed = cpu_seconds(watch.process.pid) - start_cpu, time.monotonic() - start
        print(f"idle: {used:.2f} CPU s over {elapsed:.0f} s ({100 * used / elapsed:.3f}% of one core)")
        watch.process.send_signal(2)
        watch.process.wait(30)


if __name__ == "__main__":
    main()
