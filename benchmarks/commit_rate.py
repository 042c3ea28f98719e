"""How fast one SQLite writer commits files with vectors: the ceiling on how many GPUs one
indexing process can feed.

Each run writes ``--files`` synthetic files (relative path, size, mtime, a 64-hex content
hash, picture details) with one vector each through the real ``Catalog.commit_batch``, one
transaction per batch as the indexer commits (``drop_orphans=False``), into a fresh library.
With ``--save`` it also catches the FAISS index up (``save_indexes``) when the indexer's
``SaveSchedule`` says so, as ``dreamsearch index`` does; that time is reported apart.
Vector generation is outside the timed part (a pool of clustered vectors is reused).
Reported: files/s and MB/s of vector data overall, the rate in the first and last tenth (does
it slow as the catalog grows?) and the catalog's size on disk.

    python benchmarks/commit_rate.py --files 200000 --dims 1792,768 --batches 32,64,256
    python benchmarks/commit_rate.py --files 200000 --dims 1792 --batches 64 --save
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.ann import MODEL_OF_DIM, clustered_chunks  # noqa: E402
from benchmarks.index_throughput import machine  # noqa: E402
from dreamsearch.catalog import Catalog, FileEntry  # noqa: E402
from dreamsearch.indexer.writer import SaveSchedule  # noqa: E402
from dreamsearch.layout import LibraryLayout  # noqa: E402
from dreamsearch.vector_index import save_indexes  # noqa: E402

POOL = 20_000


def entries(first: int, count: int) -> list[FileEntry]:
    """Files as the indexer records them: realistic path and hash lengths."""
    return [
        FileEntry(
            f"Photos/{i // 1000:04d}/IMG_{i:08d}.JPG",
            4_000_000 + i,
            1_700_000_000_000_000_000 + i,
            hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).hexdigest(),
            4000,
            3000,
            "JPEG",
        )
        for i in range(first, first + count)
    ]


def run(folder: Path, files: int, dim: int, batch: int, save: bool) -> dict:
    """Commit ``files`` files in batches of ``batch`` into a new library at ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    layout = LibraryLayout.prepare(folder)
    pool = next(clustered_chunks(POOL, dim, POOL))[1]
    name = MODEL_OF_DIM.get(dim, "bench")
    tenth = max(batch, files // 10)
    marks: list[tuple[int, float]] = []  # (files committed, commit seconds so far)
    commit_s = save_s = 0.0
    schedule, saves = SaveSchedule(), 0
    with Catalog(layout.catalog_path) as catalog:
        model = catalog.ensure_model(name, dim, f"synthetic-{dim}")
        root = catalog.attach(folder / "photos").id
        for first in range(0, files, batch):
            batch_files = entries(first, min(batch, files - first))
            rows = np.arange(first, first + len(batch_files)) % POOL
            vectors = {name: dict(zip((f.content_hash for f in batch_files), pool[rows], strict=True))}
            began = time.perf_counter()
            catalog.commit_batch(root, batch_files, vectors, drop_orphans=False)
            commit_s += time.perf_counter() - began
            done = first + len(batch_files)
            if done // tenth != first // tenth or done == files:
                marks.append((done, commit_s))
            if save and schedule.due():
                began = time.perf_counter()
                save_indexes(catalog, layout.index_dir, [model])
                schedule.saved(time.perf_counter() - began)
                save_s, saves = save_s + time.perf_counter() - began, saves + 1
        if save:
            began = time.perf_counter()
            save_indexes(catalog, layout.index_dir, [model])
            save_s += time.perf_counter() - began
    (n0, t0), (n9, t9) = marks[0], marks[-2] if len(marks) > 1 else (0, 0.0)
    return {
        "files": files,
        "dim": dim,
        "batch": batch,
        "save": save,
        "commit_s": commit_s,
        "save_s": save_s,
        "saves": saves,
        "first_tenth": n0 / t0,
        "last_tenth": (files - n9) / (commit_s - t9),
        "catalog_bytes": sum(p.stat().st_size for p in folder.glob("catalog.sqlite*")),
        "index_bytes": sum(p.stat().st_size for p in layout.index_dir.glob("*.faiss")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--dims", default="1792,768")
    parser.add_argument("--batches", default="32,64,256")
    parser.add_argument("--save", action="store_true", help="save_indexes during the run as the indexer does")
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads (with --save)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "dreamsearch-commit-rate")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"machine: {machine()}; faiss {faiss.__version__}; {args.files:,} files per run; catalog in {args.work_dir}")
    header = (
        f"{'dim':>5}{'batch':>6} {'index saves':<12}{'files/s':>9}{'MB/s':>7}{'1st 10%':>9}{'last 10%':>9}"
        f"{'commit s':>9}{'save s':>8}{'with saves files/s':>19}{'catalog GB':>11}{'index MB':>9}"
    )
    lines = []
    for dim in map(int, args.dims.split(",")):
        for batch in map(int, args.batches.split(",")):
            r = run(args.work_dir / f"lib-{dim}-{batch}", args.files, dim, batch, args.save)
            line = (
                f"{dim:>5}{batch:>6} {str(r['saves']) + ' + final' if args.save else 'none':<12}"
                f"{r['files'] / r['commit_s']:>9,.0f}{r['files'] * dim * 4 / r['commit_s'] / 1e6:>7.1f}"
                f"{r['first_tenth']:>9,.0f}{r['last_tenth']:>9,.0f}{r['commit_s']:>9.1f}{r['save_s']:>8.1f}"
                f"{r['files'] / (r['commit_s'] + r['save_s']):>19,.0f}{r['catalog_bytes'] / 1e9:>11.2f}"
                f"{r['index_bytes'] / 1e6:>9.0f}"
            )
            print(line, flush=True)
            lines.append(line)
            shutil.rmtree(args.work_dir / f"lib-{dim}-{batch}", ignore_errors=True)
    print("\n" + header + "\n" + "\n".join(lines))
    print("files/s and MB/s (vector bytes): commit_batch only; 'with saves' adds the index catch-ups")


if __name__ == "__main__":
    main()
