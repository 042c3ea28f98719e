"""Nearest-neighbour search: our index policy vs exact FAISS vs brute-force numpy.

Synthetic clustered unit vectors (2,000 Gaussian centres), one run per size and dimension:
build time, bytes per vector, single-query and batch-of-100 latency (p50/p95), and
recall@25 against exact search. Latency ratios are against exact ``IndexFlatIP``.

    python benchmarks/ann.py --sizes 100000 --dims 768,1792
    python benchmarks/ann.py --sizes 1000000 --dims 768      # ~10 GB of RAM, ~15 min here

``--catalog-build`` proves that building an index from a catalog takes memory for the index
plus a fixed buffer, not for the collection: for each size it fills a real catalog (the
real ``commit_batch``, 20k files per transaction, kept in ``--work-dir`` for the next run),
then builds the index in a fresh process the way ``dreamsearch index`` does
(``save_indexes``: vector ids, seeded training sample, k-means, chunked adds, save) and
reports that process's peak RSS by phase, the index and catalog sizes and the time of each
phase. ``peak - start - index`` is the buffer; it must not grow with N.

    python benchmarks/ann.py --catalog-build 250000,1000000,2000000 --dim 768   # ~7 GB disk at 2M
    python benchmarks/ann.py --catalog-build 2000000 --dim 768 --catalog-kind ivfpq
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.index_throughput import machine, peak_rss_kib  # noqa: E402
from dreamsearch.vector_index import IndexMeta, VectorIndex, plan_for, with_kind  # noqa: E402
from dreamsearch.vector_index.recall import clustered_unit_vectors, recall_at_k  # noqa: E402

K = 25
#: The catalog's model for each benchmark dimension (any name works; these read naturally).
MODEL_OF_DIM = {768: "dreamsim-dino", 1792: "dreamsim", 512: "dreamsim-clip"}
MIB = 1 << 20


def latencies(search, queries: np.ndarray, batch: int) -> tuple[float, float]:
    """p50 and p95 milliseconds of ``search`` over ``queries`` taken ``batch`` at a time."""
    times = []
    for start in range(0, len(queries) - batch + 1, batch):
        chunk = queries[start : start + batch]
        began = time.perf_counter()
        search(chunk)
        times.append((time.perf_counter() - began) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def numpy_search(data: np.ndarray):
    def search(queries):
        scores = queries @ data.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        return np.take_along_axis(top, order, 1)

    return search


def clustered_chunks(
    n: int, dim: int, chunk: int, start: int = 0, centres: int = 2000, spread: float = 0.6, seed: int = 0
):
    """``(first row, float32 [m, dim])`` chunks of ``n`` clustered unit vectors around one
    fixed set of centres (like ``clustered_unit_vectors``, but never all in memory); a chunk
    depends only on its position, so a fill can resume at ``start``."""
    means = clustered_unit_vectors(centres, dim, centres=centres, spread=0.0, seed=seed)
    for first in range(start, n, chunk):
        rng = np.random.default_rng((seed, first))
        count = min(chunk, n - first)
        block = means[rng.integers(0, centres, count)]
        block += rng.normal(scale=spread / np.sqrt(dim), size=(count, dim)).astype(np.float32)
        yield first, block / np.linalg.norm(block, axis=1, keepdims=True)


def fill_catalog(folder: Path, n: int, dim: int, chunk: int = 20_000) -> float:
    """Make ``folder`` a library whose catalog holds ``n`` synthetic vectors of one model,
    written through ``Catalog.commit_batch``; resumes or reuses what is there. Seconds spent."""
    from dreamsearch.catalog import Catalog, FileEntry
    from dreamsearch.layout import LibraryLayout

    began = time.perf_counter()
    with Catalog(LibraryLayout.prepare(folder).catalog_path) as catalog:
        name = MODEL_OF_DIM.get(dim, "bench")
        model = catalog.ensure_model(name, dim, f"synthetic-{dim}")
        have = catalog.count_vectors(model)
        if have > n:
            raise SystemExit(f"{folder} holds {have:,} vectors, more than {n:,}: remove it")
        root = catalog.attach(folder / "photos").id
        for first, vectors in clustered_chunks(n, dim, chunk, start=have):
            files = [
                FileEntry(f"{i // 1000:05d}/img{i:09d}.jpg", 1000, 0, f"h{i:09d}", 640, 480, "JPEG")
                for i in range(first, first + len(vectors))
            ]
            catalog.commit_batch(
                root,
                files,
                {name: dict(zip((f.content_hash for f in files), vectors, strict=True))},
                drop_orphans=False,
            )
            print(f"  filled {first + len(vectors):,} / {n:,}", end="\r", file=sys.stderr, flush=True)
    return time.perf_counter() - began


class RssSampler:
    """This process's RSS every ``period`` s, so each build phase gets its own peak."""

    def __init__(self, period: float = 0.05) -> None:
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._done.is_set():
            with open("/proc/self/statm") as handle:
                self.samples.append((time.perf_counter(), int(handle.read().split()[1]) * page))
            self._done.wait(period)

    def peak(self, began: float, ended: float) -> int:
        return max((rss for t, rss in self.samples if began <= t <= ended), default=0)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


class Phases:
    """When each step of the build ran, found by wrapping the real methods it calls (the
    build itself is the unchanged library code)."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}

    def wrap(self, owner: type, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans.setdefault(label, (began, time.perf_counter()))  # the first call

        setattr(owner, attribute, timed)


def build_child(folder: Path, kind: str, threads: int) -> None:
    """Build and save the index of ``folder``'s catalog from scratch, in this fresh process;
    print what it cost as one JSON line."""
    import resource

    from dreamsearch.catalog import Catalog
    from dreamsearch.layout import LibraryLayout
    from dreamsearch.vector_index import rebuild, save_indexes
    from dreamsearch.vector_index.sync import _save

    faiss.omp_set_num_threads(threads)
    layout = LibraryLayout.existing(folder)
    for old in layout.index_dir.glob("*"):  # force a full build
        old.unlink()
    phases = Phases()
    phases.wrap(Catalog, "vector_ids", "ids")
    phases.wrap(Catalog, "vectors_for", "sample")
    phases.wrap(VectorIndex, "create", "train")
    phases.wrap(VectorIndex, "save", "save")
    with Catalog(layout.catalog_path) as catalog:
        model = catalog.model(catalog.model_names()[0])
        n = catalog.count_vectors(model)
        sampler = RssSampler()
        time.sleep(0.2)
        began = time.perf_counter()
        start_rss = sampler.samples[-1][1]
        if kind == "policy":  # what `dreamsearch index` runs after committing
            save_indexes(catalog, layout.index_dir, [model])
        else:
            _save(rebuild(catalog, model, plan=with_kind(kind, n, model.dim)), catalog, model, layout.index_dir)
        ended = time.perf_counter()
        time.sleep(0.1)
        sampler.stop()
    meta = json.loads((layout.index_dir / f"{model.name}.json").read_text())
    spans = phases.spans
    spans["add"] = (spans["train"][1], spans["save"][0])
    spans["total"] = (began, ended)
    print(
        json.dumps(
            {
                "n": n,
                "dim": model.dim,
                "kind": meta["plan"]["kind"],
                "factory": meta["plan"]["factory"],
                "catalog_bytes": sum(p.stat().st_size for p in folder.glob("catalog.sqlite*")),
                "index_bytes": meta["size"],
                "start_rss": start_rss,
                "vmhwm": peak_rss_kib() * 1024,
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "seconds": {k: b - a for k, (a, b) in spans.items()},
                "peak_rss": {k: sampler.peak(a, b) for k, (a, b) in spans.items()},
                "rss_after_add": sampler.peak(spans["save"][0] - 0.06, spans["save"][0]),
            }
        )
    )


def catalog_build(sizes: list[int], dim: int, work: Path, kind: str, threads: int) -> None:
    """Fill (or reuse) one catalog per size, build each index in a fresh process, tabulate."""
    print(
        f"machine: {machine()}; faiss {faiss.__version__}, {threads} threads; dim {dim}; index kind {kind}; "
        f"catalogs in {work}"
    )
    rows = []
    for n in sizes:
        folder = work / f"lib-{n}x{dim}"
        filled = fill_catalog(folder, n, dim)
        print(f"catalog of {n:,} x {dim}: ready in {filled:.0f} s", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--build-child", str(folder), "--catalog-kind", kind, "--threads", str(threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        rows.append(result)
    print(
        f"\n{'N':>10}{'dim':>5} {'index':<18}{'catalog GB':>11}{'index MiB':>10}{'start':>7}{'peak':>7}"
        f"{'buffer':>8} {'peak MiB in: ids/sample/train/add/save':<38}"
        f"{'s: ids/sample/train/add/save':>34}{'total s':>9}"
    )
    for r in rows:
        peaks, secs = r["peak_rss"], r["seconds"]
        steps = ("ids", "sample", "train", "add", "save")
        buffer = r["vmhwm"] - r["start_rss"] - r["index_bytes"]
        print(
            f"{r['n']:>10,}{r['dim']:>5} {r['factory']:<18}{r['catalog_bytes'] / 1e9:>11.2f}"
            f"{r['index_bytes'] / MIB:>10.0f}{r['start_rss'] / MIB:>7.0f}{r['vmhwm'] / MIB:>7.0f}{buffer / MIB:>8.0f} "
            f"{'/'.join(f'{peaks.get(s, 0) / MIB:.0f}' for s in steps):<38}"
            f"{'/'.join(f'{secs.get(s, 0):.1f}' for s in steps):>34}{secs['total']:>9.1f}"
        )
    print(
        "start: RSS before the build (Python, FAISS, the open catalog); peak: VmHWM of the build process; "
        "buffer = peak - start - index file size"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog-build", help="sizes (comma-separated): build from a real catalog, measure RSS")
    parser.add_argument("--dim", type=int, default=768, help="with --catalog-build")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "dreamsearch-ann-catalogs")
    parser.add_argument("--catalog-kind", default="policy", help="policy, ivf or ivfpq (with --catalog-build)")
    parser.add_argument("--build-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--dims", default="768")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spread", type=float, default=0.6, help="cluster noise norm (bigger: harder, overlapping)")
    parser.add_argument("--kinds", default="policy,ivfpq", help="besides exact and numpy: policy, flat, ivf, ivfpq")
    args = parser.parse_args()
    if args.build_child:
        return build_child(args.build_child, args.catalog_kind, args.threads)
    if args.catalog_build:
        return catalog_build(
            [int(n) for n in args.catalog_build.split(",")], args.dim, args.work_dir, args.catalog_kind, args.threads
        )
    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {args.threads} threads, k={K}, cluster spread {args.spread}")
    rows = [
        f"{'N':>9}{'dim':>6} {'method':<24}{'build s':>9}{'B/vector':>10}{'1q p50 ms':>11}{'1q p95':>8}"
        f"{'100q p50 ms':>13}{'100q p95':>10}{'recall@25':>11}{'speed-up':>10}"
    ]
    for n in map(int, args.sizes.split(",")):
        for dim in map(int, args.dims.split(",")):
            everything = clustered_unit_vectors(n + args.queries, dim, centres=2000, spread=args.spread, seed=n + dim)
            data, queries = everything[:n], everything[n:]
            ids = np.arange(n, dtype=np.int64)
            stored16 = data.astype(np.float16)  # what the catalog can hold, for re-ranking

            def fetch(wanted):
                return wanted, stored16[wanted].astype(np.float32)  # noqa: B023 - used in this iteration only

            began = time.perf_counter()
            exact = faiss.IndexFlatIP(dim)
            exact.add(data)
            exact_build = time.perf_counter() - began
            truth = exact.search(queries, K)[1]
            exact_single = latencies(partial(exact.search, k=K), queries[:100], 1)
            exact_batch = latencies(partial(exact.search, k=K), queries, 100)

            def row(name, build, per_vector, single, batch, recall):
                # n, dim, exact_single: this iteration's, and row is only called in it
                line = (
                    f"{n:>9}{dim:>6} {name:<24}{build:>9.1f}{per_vector:>10.0f}{single[0]:>11.2f}{single[1]:>8.2f}"  # noqa: B023
                    f"{batch[0]:>13.1f}{batch[1]:>10.1f}{recall:>11.3f}{exact_single[0] / single[0]:>9.1f}x"  # noqa: B023
                )
                rows.append(line)
                print(line, flush=True)

            row("exact IndexFlatIP", exact_build, dim * 4, exact_single, exact_batch, 1.0)
            brute = numpy_search(data)
            row(
                "numpy brute force",
                0.0,
                dim * 4,
                latencies(brute, queries[:100], 1),
                latencies(brute, queries, 100),
                recall_at_k(brute(queries), truth, K),
            )
            for kind in args.kinds.split(","):
                plan = plan_for(n, dim) if kind == "policy" else with_kind(kind, n, dim)
                began = time.perf_counter()
                index = VectorIndex.build(ids, data, plan, IndexMeta("bench", "", dim, plan))
                build = time.perf_counter() - began
                per_vector = len(faiss.serialize_index(index.index)) / n
                rerank = fetch if plan.rerank else None
                single = latencies(partial(index.search, k=K, fetch=rerank), queries[:100], 1)
                batch = latencies(partial(index.search, k=K, fetch=rerank), queries, 100)
                found = index.search(queries, K, fetch=rerank)[1]
                label = f"{kind}: {plan.factory}" + (f" +rerank{plan.rerank}k" if plan.rerank else "")
                row(label[:24], build, per_vector, single, batch, recall_at_k(found, truth, K))
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
