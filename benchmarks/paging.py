"""Paging through search results: latency per page, and whether following the pages ever
shows a result twice or skips one (issue 21, item 15: "IVF paging can repeat or skip an
item at page edges"): ``Searcher.search`` as it is (one ranked list per query, in stages
of fixed depths) against the way it was (each page searched as deep as it needs, offset +
k), the latter re-created here on the same code, so that nothing else differs.

A synthetic library of ``--files`` files (1-byte files on disk, so every result is checked
on disk as the real search does), with clustered unit vectors of ``--dim`` values that
come in runs of ``--tie`` identical ones (a photo saved again with other metadata: other
bytes, the same pixels), under an index of each ``--kinds`` (forced, whatever the size
policy says). For each kind and each way, in fresh processes taking turns:

- p50 / p95 of ``Library.search`` for page 1, a page at offset 100 and one at offset 1000
  (k = 25, from a stored vector: no model runs);
- over ``--queries`` queries, the results seen twice and missed when following
  ``next_offset`` with k = 7 over the first 150, against one 150-long page.

    python benchmarks/paging.py
    python benchmarks/paging.py --files 20000 --dim 768 --kinds ivf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
MODEL = "dreamsim-dino"

MEASURE = r"""
import json, sys, time
from dataclasses import replace
import numpy as np
from dreamsearch.api import Library
from dreamsearch.search import Searcher
library_path, queries, reps, way = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def one_search_per_page(self, vector, k, exclude=(), max_distance=None, under=None, offset=0):
    # Searcher.search before issue 21 (under= left out: not used here)
    wanted = min(offset + k, max(len(self._index), 1))
    depth = wanted + len(exclude)
    while True:
        scores, ids = self._index.search(np.asarray(vector, np.float32)[None], depth, nprobe=self.nprobe,
                                        fetch=lambda wanted: self._catalog.vectors_for(self.info, wanted))
        matches, _farther = self._join(scores[0], ids[0], set(exclude), max_distance, under)
        if len(matches) >= wanted or (ids[0] < 0).any() or depth >= len(self._index):
            return [replace(m, rank=rank) for rank, m in enumerate(matches[offset:wanted], offset + 1)]
        depth *= 4

if way == "before":
    Searcher.search = one_search_per_page
rng = np.random.default_rng(7)
out = {}
with Library.open(library_path) as library:
    files = sum(library.vector_counts().values())
    def query():
        return library.query(like=int(rng.integers(1, files + 1)), model="dreamsim-dino")
    library.search(query(), k=25)  # open the index
    for offset in (0, 100, 1000):
        times = []
        for _ in range(reps):
            q = query()
            start = time.perf_counter()
            library.search(q, k=25, include_self=True, offset=offset)
            times.append(time.perf_counter() - start)
        out[f"offset {offset}"] = [float(np.percentile(times, p)) * 1e3 for p in (50, 95)]
    repeated = missed = 0
    for _ in range(queries):
        q, seen, offset = query(), [], 0
        while offset is not None and offset < 150:
            page = library.search(q, k=7, include_self=True, offset=offset)
            seen += [m.path for m in page.matches]
            offset = page.next_offset
        whole = [m.path for m in library.search(q, len(seen), True).matches]
        repeated += len(seen) - len(set(seen))
        missed += len(set(whole) - set(seen))
    out["repeated"], out["missed"] = repeated, missed
print(json.dumps(out))
"""


def build(root: Path, kind: str, files: int, dim: int, tie: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from dreamsearch.catalog import Catalog, FileEntry
    from dreamsearch.layout import LibraryLayout
    from dreamsearch.vector_index import rebuild, with_kind
    from dreamsearch.vector_index.recall import clustered_unit_vectors

    vectors = clustered_unit_vectors(files, dim, centres=max(20, files // 500), seed=3)
    for start in range(0, files, tie):
        vectors[start : start + tie] = vectors[start]
    library = LibraryLayout.prepare(root / f"lib-{kind}")
    photos = root / "photos"
    entries = []
    photos.mkdir(exist_ok=True)
    for i in range(files):
        path = photos / f"{i}.jpg"
        if not path.exists():
            path.write_bytes(b"x")
            os.utime(path, ns=((1_000 + i) * 10**9,) * 2)
        entries.append(FileEntry(f"{i}.jpg", 1, (1_000 + i) * 10**9, f"h{i}", 1, 1, "JPEG"))
    with Catalog(library.catalog_path) as catalog:
        model = catalog.ensure_model(MODEL, dim, "synthetic")
        root_id = catalog.attach(photos).id
        for start in range(0, files, 5_000):
            chunk = entries[start : start + 5_000]
            catalog.commit_batch(
                root_id, chunk, {MODEL: {e.content_hash: vectors[start + j] for j, e in enumerate(chunk)}}
            )
        index = rebuild(catalog, model, plan=with_kind(kind, files, dim))
        index.save(library.index_dir, index.meta.seq, catalog.identity(), catalog.chain_at(model, index.meta.seq) or "")
    return library.root


def measure(way: str, library: Path, queries: int, reps: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(library), str(queries), str(reps), way],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--tie", type=int, default=3)
    parser.add_argument("--kinds", default="ivf,ivfpq")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side; the best is shown")
    args = parser.parse_args()
    print(
        f"{args.files:,} files, dim {args.dim}, runs of {args.tie} identical vectors; k = 25; "
        f"p50 / p95 in ms over {args.reps} queries; paging: k = 7 over the first 150, {args.queries} queries"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            started = time.perf_counter()
            library = build(Path(tmp), kind, args.files, args.dim, args.tie)
            print(f"\n{kind} (built in {time.perf_counter() - started:.0f} s)")
            results = {}
            for name in ["before", "now"] * args.rounds:
                measured = measure(name, library, args.queries, args.reps)
                for key, value in measured.items():  # the best of the rounds (other load only slows)
                    best = results.setdefault(name, {}).get(key)
                    results[name][key] = value if best is None or isinstance(value, int) else min(best, value)
            for key in ("offset 0", "offset 100", "offset 1000"):
                before, now = results["before"][key], results["now"][key]
                print(
                    f"  {key:>11}: before {before[0]:6.2f} / {before[1]:6.2f}   now {now[0]:6.2f} / {now[1]:6.2f}"
                    f"   p50 ratio {now[0] / before[0]:.2f}x"
                )
            for name in ("before", "now"):
                print(
                    f"  {name:>6}: results shown twice {results[name]['repeated']}, "
                    f"missed {results[name]['missed']} (following next_offset)"
                )


if __name__ == "__main__":
    main()
