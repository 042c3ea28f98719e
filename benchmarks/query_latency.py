"""Query latency on a 100k-vector library: dreamsearch vs the official package's naive search.

Four timings per model (``dreamsim`` and ``dreamsim-dino``), p50 and p95:
- cold CLI: ``dreamsearch query x.jpg -k 25`` from process start to exit;
- cold naive: a fresh Python that does what the official README suggests: build
  ``dreamsim(pretrained=True)``, embed the query, load the stored embeddings (``.npy``) and
  brute-force ``1 - cosine`` against all of them, top 25;
- warm API: ``Library.search(Library.query(path), k=25)`` with the model loaded;
- warm naive: the same naive search with the model and embeddings already in memory;
plus the search step alone (FAISS IVF + exact re-rank vs brute force), which is what the
index buys once embedding is done. Runs alternate between the two sides.

Weights are seeded random ViT-Bs in the official layout (same code paths and costs as the
real ones); the 100k library vectors are synthetic unit vectors in 512 clusters, stored
under the model's weights fingerprint so the CLI accepts them.

    python benchmarks/query_latency.py                  # CPU, 5 cold / 20 warm runs
    python benchmarks/query_latency.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TYPES = {"dreamsim": "ensemble", "dreamsim-dino": "dino_vitb16"}

NAIVE = """
import sys, numpy as np, torch
from PIL import Image
from dreamsim import dreamsim
weights, dreamsim_type, embeddings, query, device = sys.argv[1:6]
model, preprocess = dreamsim(pretrained=True, device=device, cache_dir=weights, dreamsim_type=dreamsim_type)
stored = torch.from_numpy(np.load(embeddings)).to(device)
with torch.no_grad():
    q = model.embed(preprocess(Image.open(query)).to(device))
    distances = 1 - torch.nn.functional.cosine_similarity(q, stored, dim=-1)
    top = torch.topk(distances, 25, largest=False)
print(top.indices.tolist()[:3])
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((512, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 512, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_library(folder: Path, name: str, fingerprint: str, vectors: np.ndarray) -> None:
    from dreamsearch.catalog import Catalog, FileEntry
    from dreamsearch.layout import LibraryLayout
    from dreamsearch.vector_index import save_indexes

    library = LibraryLayout.prepare(folder)
    with Catalog(library.catalog_path) as catalog:
        catalog.ensure_model(name, vectors.shape[1], fingerprint)
        root = catalog.attach(folder / "photos").id
        for start in range(0, len(vectors), 20_000):
            chunk = vectors[start : start + 20_000]
            files = [
                FileEntry(f"img{start + i:06d}.jpg", 1000, 0, f"h{start + i}", 640, 480, "JPEG")
                for i in range(len(chunk))
            ]
            catalog.commit_batch(root, files, {name: dict(zip((f.content_hash for f in files), chunk, strict=True))})
        save_indexes(catalog, library.index_dir)


def timed_run(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--cold", type=int, default=5, help="cold runs per side")
    parser.add_argument("--warm", type=int, default=20, help="warm queries per side")
    parser.add_argument("--models", default="dreamsim,dreamsim-dino")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from benchmarks.index_throughput import scratch_dir
    from dreamsearch.api import Library
    from dreamsearch.layout import LibraryLayout
    from dreamsearch.models import load_model
    from dreamsearch.search import Searcher
    from tests.helpers.images import photo_like
    from tests.helpers.official_layout import official_model, write_official_cache

    work = args.work_dir or scratch_dir("dreamsearch-query-bench-")
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "weights"
    query = work / "ramen.jpg"
    photo_like(640, 480, 7).save(query, quality=90)
    print(
        f"{args.vectors:,} library vectors, device {args.device}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}"
    )
    rows = []
    for name in args.models.split(","):
        dreamsim_type = TYPES[name]
        write_official_cache(weights, dreamsim_type, seed=5)
        ours = load_model(name, weights_dir=weights, device=args.device)
        vectors = clustered(args.vectors, ours.dim, seed=1)
        library_dir = work / f"lib-{name}"
        if not library_dir.exists():
            build_library(library_dir, name, ours.fingerprint, vectors)
        embeddings = work / f"{name}-embeddings.npy"
        np.save(embeddings, vectors)
        del ours

        cli = [
            sys.executable,
            "-m",
            "dreamsearch",
            "query",
            str(query),
            "-k",
            "25",
            "-m",
            name,
            "--library",
            str(library_dir),
            "--weights-dir",
            str(weights),
            "--device",
            args.device,
            "--json",
        ]
        naive = [sys.executable, "-c", NAIVE, str(weights), dreamsim_type, str(embeddings), str(query), args.device]
        cold_ours, cold_naive = [], []
        for _ in range(args.cold):
            cold_ours.append(timed_run(cli))
            cold_naive.append(timed_run(naive))

        official, preprocess = official_model(weights, dreamsim_type, args.device)
        stored = torch.from_numpy(vectors).to(args.device)
        warm_ours, warm_naive, search_ours, search_naive = [], [], [], []
        with (
            Library.open(library_dir, weights_dir=weights, device=args.device) as library,
            Searcher(LibraryLayout.prepare(library_dir), name) as searcher,
            torch.no_grad(),
        ):
            library.search(library.query(query, model=name), k=25)  # load the model and open the index
            q = library.embedder(name).embed(library.embedder(name).preprocess(Image.open(query).convert("RGB"))[None])[
                0
            ]
            for _ in range(args.warm):
                began = time.perf_counter()
                library.search(library.query(query, model=name), k=25)
                warm_ours.append(time.perf_counter() - began)
                began = time.perf_counter()
                e = official.embed(preprocess(Image.open(query)).to(args.device))
                torch.topk(1 - torch.nn.functional.cosine_similarity(e, stored, dim=-1), 25, largest=False)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                warm_naive.append(time.perf_counter() - began)
                began = time.perf_counter()
                searcher.search(q, 25)
                search_ours.append(time.perf_counter() - began)
                qt = torch.from_numpy(q).to(args.device)[None]
                began = time.perf_counter()
                torch.topk(1 - torch.nn.functional.cosine_similarity(qt, stored, dim=-1), 25, largest=False)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                search_naive.append(time.perf_counter() - began)
        del official, stored
        for label, a, b in (
            ("cold CLI / naive process", cold_ours, cold_naive),
            ("warm API / naive in memory", warm_ours, warm_naive),
            ("search step only", search_ours, search_naive),
        ):
            (p50a, p95a), (p50b, p95b) = percentiles(a), percentiles(b)
            rows.append((name, label, p50a, p95a, p50b, p95b, p50b / p50a))

    print(f"\n{'model':<14}{'measure':<28}{'ours p50':>10}{'p95':>9}{'naive p50':>11}{'p95':>9}{'speed-up':>10}")
    for name, label, p50a, p95a, p50b, p95b, ratio in rows:
        print(f"{name:<14}{label:<28}{_ms(p50a):>10}{_ms(p95a):>9}{_ms(p50b):>11}{_ms(p95b):>9}{ratio:>9.2f}x")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.2f} ms"


if __name__ == "__main__":
    main()
