"""Nearest-neighbour search: our index policy vs exact FAISS vs brute-force numpy.

Synthetic clustered unit vectors (2,000 Gaussian centres), one run per size and dimension:
build time, bytes per vector, single-query and batch-of-100 latency (p50/p95), and
recall@25 against exact search. Latency ratios are against exact ``IndexFlatIP``.

    python benchmarks/ann.py --sizes 100000 --dims 768,1792
    python benchmarks/ann.py --sizes 1000000 --dims 768      # ~10 GB of RAM, ~15 min here
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from dreamsearch.vector_index import IndexMeta, VectorIndex, plan_for, with_kind  # noqa: E402
from dreamsearch.vector_index.recall import clustered_unit_vectors, recall_at_k  # noqa: E402

K = 25


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--dims", default="768")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spread", type=float, default=0.6, help="cluster noise norm (bigger: harder, overlapping)")
    parser.add_argument("--kinds", default="policy,ivfpq", help="besides exact and numpy: policy, flat, ivf, ivfpq")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {args.threads} threads, k={K}, cluster spread {args.spread}")
    rows = [f"{'N':>9}{'dim':>6} {'method':<24}{'build s':>9}{'B/vector':>10}{'1q p50 ms':>11}{'1q p95':>8}"
            f"{'100q p50 ms':>13}{'100q p95':>10}{'recall@25':>11}{'speed-up':>10}"]
    for n in map(int, args.sizes.split(",")):
        for dim in map(int, args.dims.split(",")):
            everything = clustered_unit_vectors(n + args.queries, dim, centres=2000, spread=args.spread, seed=n + dim)
            data, queries = everything[:n], everything[n:]
            ids = np.arange(n, dtype=np.int64)
            stored16 = data.astype(np.float16)  # what the catalog can hold, for re-ranking

            def fetch(wanted):
                return wanted, stored16[wanted].astype(np.float32)

            began = time.perf_counter()
            exact = faiss.IndexFlatIP(dim)
            exact.add(data)
            exact_build = time.perf_counter() - began
            truth = exact.search(queries, K)[1]
            exact_single = latencies(lambda q: exact.search(q, K), queries[:100], 1)
            exact_batch = latencies(lambda q: exact.search(q, K), queries, 100)

            def row(name, build, per_vector, single, batch, recall):
                line = (f"{n:>9}{dim:>6} {name:<24}{build:>9.1f}{per_vector:>10.0f}{single[0]:>11.2f}{single[1]:>8.2f}"
                        f"{batch[0]:>13.1f}{batch[1]:>10.1f}{recall:>11.3f}{exact_single[0] / single[0]:>9.1f}x")
                rows.append(line)
                print(line, flush=True)

            row("exact IndexFlatIP", exact_build, dim * 4, exact_single, exact_batch, 1.0)
            brute = numpy_search(data)
            row("numpy brute force", 0.0, dim * 4, latencies(brute, queries[:100], 1),
                latencies(brute, queries, 100), recall_at_k(brute(queries), truth, K))
            for kind in args.kinds.split(","):
                plan = plan_for(n, dim) if kind == "policy" else with_kind(kind, n, dim)
                began = time.perf_counter()
                index = VectorIndex.build(ids, data, plan, IndexMeta("bench", "", dim, plan))
                build = time.perf_counter() - began
                per_vector = len(faiss.serialize_index(index.index)) / n
                rerank = fetch if plan.rerank else None
                single = latencies(lambda q: index.search(q, K, fetch=rerank), queries[:100], 1)
                batch = latencies(lambda q: index.search(q, K, fetch=rerank), queries, 100)
                found = index.search(queries, K, fetch=rerank)[1]
                label = f"{kind}: {plan.factory}" + (f" +rerank{plan.rerank}k" if plan.rerank else "")
                row(label[:24], build, per_vector, single, batch, recall_at_k(found, truth, K))
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
