"""What making the grid's thumbnails while indexing costs the indexer, and what it saves the
first view of a result grid (issue 21: a grid of 4K wallpapers showed grey tiles for ~8 s).

A folder of ``--photos`` photo-like pictures of ``--size`` (default 3840x2160, 4K) is made,
as ``--format`` (JPEG, or WebP and PNG, which have no reduced decode).
Then, in this process, on one thread:
- indexing: each file's ``decode_bytes`` as the indexer runs it for DreamSim (JPEG draft),
  without and with ``on_picture`` making and caching the 256-px thumbnail, alternated
  ``--repeat`` times (median per file, and the ratio);
- first view: every thumbnail of the grid served through ``thumbnail()`` with an empty
  cache (each photo decoded on demand, as before) and with the cache the indexer filled.

    python benchmarks/thumbnails.py --photos 24 --format jpeg webp
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.index_throughput import machine  # noqa: E402
from dreamsearch.catalog import FileDetail  # noqa: E402
from dreamsearch.defaults import DEFAULT_MAX_PIXELS  # noqa: E402
from dreamsearch.images import Preprocess, decode_bytes  # noqa: E402
from dreamsearch.scan import ScannedFile  # noqa: E402
from dreamsearch.server.thumbnails import GRID_SIZE, ThumbnailCache, thumbnail  # noqa: E402
from tests.helpers.images import photo_like  # noqa: E402

DREAMSIM = (Preprocess(224),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=24, help="one grid's worth")
    parser.add_argument("--size", type=int, nargs=2, default=(3840, 2160))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", nargs="+", default=["jpeg", "webp"], choices=["jpeg", "webp", "png"])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for kind in args.format:
        measure(args.photos, args.size, kind, args.repeat)


def measure(count: int, size: tuple[int, int], kind: str, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = []
        for i in range(count):
            paths.append(work / f"p{i:03d}.{kind}")
            photo_like(*size, i).save(paths[-1], quality=90)
        data = {path: path.read_bytes() for path in paths}
        states = {path: ScannedFile(path.name, *_state(path)) for path in paths}
        print(
            f"{count} {kind.upper()} files of {size[0]}x{size[1]}, "
            f"{sum(map(len, data.values())) / len(data) / 1e6:.1f} MB each"
        )

        cache = ThumbnailCache(work / "thumbnails")
        times: dict[str, list[float]] = {"decode only": [], "decode + grid thumbnail": []}
        for _ in range(repeat):
            for name, hook in (("decode only", None), ("decode + grid thumbnail", cache.keep_grid)):
                for path in paths:
                    started = time.perf_counter()
                    decode_bytes(
                        str(path),
                        data[path],
                        DREAMSIM,
                        DEFAULT_MAX_PIXELS,
                        True,
                        None if hook is None else partial(hook, states[path]),
                    )
                    times[name].append(time.perf_counter() - started)
        for name, seconds in times.items():
            print(f"indexing, {name}: median {1000 * statistics.median(seconds):.1f} ms per file")
        ratio = statistics.median(times["decode + grid thumbnail"]) / statistics.median(times["decode only"])
        print(f"indexing with / without the thumbnail: {ratio:.2f}x")

        details = [
            FileDetail(i + 1, i + 1, str(path), *_state(path)[:2], None, None, *_state(path)[2:])
            for i, path in enumerate(paths)
        ]
        empty = ThumbnailCache(work / "cold")
        started = time.perf_counter()
        for detail in details:
            thumbnail(empty, detail, GRID_SIZE, Path(detail.path).read_bytes)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        for detail in details:
            thumbnail(cache, detail, GRID_SIZE, Path(detail.path).read_bytes)
        warm = time.perf_counter() - started
        print(
            f"first view of the grid ({count} thumbnails, one thread): made on demand {cold:.2f} s, "
            f"made while indexing {1000 * warm:.1f} ms ({cold / warm:.0f}x faster)"
        )
        shutil.rmtree(work / "cold")


def _state(path: Path) -> tuple[int, int, int, int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev, info.st_ctime_ns


if __name__ == "__main__":
    main()
