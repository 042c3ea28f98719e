"""Search latency and throughput of ``dreamsearch serve`` on a 100k-vector library.

All in one run, for one model (``dreamsim-dino`` by default):
- warm HTTP, p50/p95: ``POST /api/search`` uploading a JPEG whose bytes are in the library,
  and ``GET /api/files/{id}/similar``, both k=25, against a real ``dreamsearch serve``
  subprocess on 127.0.0.1 (nothing else is contacted), one kept-alive httpx client;
- warm in-process, the same two operations through ``Library`` (what each route calls),
  interleaved with the HTTP requests so both see the same machine load;
- HTTP overhead = HTTP p50 - in-process p50 (target <= 10 ms) and by-id p95 (<= 30 ms);
- cold CLI: ``dreamsearch query FILE -k 25`` from process start to exit (median);
- throughput with 1, 4 and 16 concurrent clients (threads, one httpx client each), for a
  fixed number of seconds per case.

The library is built as in ``query_latency.py`` (seeded random weights in the official
layout, synthetic clustered vectors) plus one real JPEG; every file the catalog names is
put on disk (sparse, with the indexed size and mtime), since results are checked with a stat.

    python benchmarks/serve_latency.py                     # CPU, 100k vectors
    python benchmarks/serve_latency.py --vectors 5000 --warm 10 --cold 2 --seconds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import httpx  # noqa: E402

from benchmarks.index_throughput import scratch_dir  # noqa: E402
from benchmarks.query_latency import ROOT, TYPES, _ms, build_library, clustered, percentiles, timed_run  # noqa: E402

K = 25
CLI = str(Path(sys.executable).with_name("dreamsearch"))


def prepare_library(folder: Path, weights: Path, name: str, n: int, jpeg: Path, device: str) -> None:
    """``n - 1`` synthetic files plus ``jpeg`` (its real hash and vector), all on disk."""
    from dreamsearch.api import Library
    from dreamsearch.catalog import Catalog, FileEntry
    from dreamsearch.layout import LibraryLayout
    from dreamsearch.models import load_model
    from dreamsearch.reading import content_hash
    from dreamsearch.vector_index import save_indexes

    model = load_model(name, weights_dir=weights, device=device)
    build_library(folder, name, model.fingerprint, clustered(n - 1, model.dim, seed=1))
    del model
    photos = folder / "photos"
    photos.mkdir(exist_ok=True)
    for i in range(n - 1):  # build_library's entries: size 1000, mtime 0
        path = photos / f"img{i:06d}.jpg"
        with open(path, "wb") as f:
            f.truncate(1000)
        os.utime(path, ns=(0, 0))
    data = jpeg.read_bytes()
    (photos / jpeg.name).write_bytes(data)
    with Library(LibraryLayout(folder), weights_dir=weights, device=device) as library:
        vector = library.embed(data, name, name=jpeg.name)
    with Catalog(LibraryLayout.existing(folder).catalog_path) as catalog:
        root = catalog.attach(photos).id
        entry = FileEntry(
            jpeg.name, len(data), (photos / jpeg.name).stat().st_mtime_ns, content_hash(data), 640, 480, "JPEG"
        )
        catalog.commit_batch(root, [entry], {name: {entry.content_hash: vector}})
        save_indexes(catalog, LibraryLayout.existing(folder).index_dir)


def start_server(command: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Run ``dreamsearch serve --port 0 ...`` (stderr to ``log``); its base URL once the
    models are loaded."""
    with open(log, "w") as stderr:
        server = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        )
    line = server.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not found:
        server.kill()
        server.wait()
        tail = log.read_text(errors="replace")[-3000:]  # the log's folder goes when the benchmark exits
        raise SystemExit(f"serve did not print its URL: {line!r}; its stderr ended with:\n{tail}")
    url = found.group(0)
    httpx.get(url + "api/health", timeout=300).raise_for_status()  # answered after the preload
    return server, url


def stop_server(server: subprocess.Popen) -> None:
    """Ask the server to end (its lifespan closes the library), then make sure it has."""
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()


def timed(operation: Callable[[], None]) -> float:
    began = time.perf_counter()
    operation()
    return time.perf_counter() - began


def throughput(make_request: Callable[[httpx.Client], None], clients: int, seconds: float) -> tuple[float, float]:
    """Requests per second and p50 latency with ``clients`` threads, each its own client."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            make_request(client)  # connect outside the measurement
            while time.perf_counter() < deadline:
                latencies.append(timed(lambda: make_request(client)))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - began), statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--model", default="dreamsim-dino", choices=sorted(TYPES))
    parser.add_argument("--warm", type=int, default=50, help="warm requests per operation and side")
    parser.add_argument("--cold", type=int, default=5, help="cold CLI runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput case")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--work-dir", type=Path, default=None, help="reuse a library built before")
    args = parser.parse_args()

    import torch

    from dreamsearch.api import Library
    from tests.helpers.images import photo_like
    from tests.helpers.official_layout import write_official_cache

    name = args.model
    work = args.work_dir or scratch_dir("dreamsearch-serve-bench-")
    work.mkdir(parents=True, exist_ok=True)
    weights, library_dir, jpeg = work / "weights", work / f"lib-{name}-{args.vectors}", work / "ramen.jpg"
    write_official_cache(weights, TYPES[name], seed=5)
    if not library_dir.exists():
        photo_like(640, 480, 7).save(jpeg, quality=90)
        prepare_library(library_dir, weights, name, args.vectors, jpeg, args.device)
    data = jpeg.read_bytes()
    print(
        f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, device {args.device}"
    )
    print(f"model {name}, {args.vectors:,} library vectors, k={K}, {args.warm} warm requests per figure")

    common = ["--library", str(library_dir), "--weights-dir", str(weights), "--device", args.device]
    server, url = start_server([CLI, "serve", "--port", "0", "--models", name, *common], work / "serve.log")
    try:
        form = {"k": str(K), "model": name}

        def upload(client: httpx.Client) -> None:
            response = client.post(url + "api/search", files={"image": (jpeg.name, data, "image/jpeg")}, data=form)
            response.raise_for_status()
            assert len(response.json()["results"]) == K, response.text[:300]

        with (
            Library.open(library_dir, weights_dir=weights, device=args.device) as library,
            httpx.Client(timeout=120) as client,
        ):
            own = library.search(library.query(data, model=name, name=jpeg.name), k=K, include_self=True).matches
            assert own[0].path.endswith(jpeg.name) and own[0].distance < 1e-3, own[0]
            ids = [m.id for m in own]  # by-id queries cycle through these files

            def similar(client: httpx.Client, i: int = 0) -> None:
                response = client.get(f"{url}api/files/{ids[i % K]}/similar", params=form)
                response.raise_for_status()
                assert len(response.json()["results"]) == K, response.text[:300]

            first = client.post(url + "api/search", files={"image": (jpeg.name, data, "image/jpeg")}, data=form)
            assert [r["id"] for r in first.json()["results"]] == ids, "HTTP and in-process results differ"
            similar(client)
            samples: dict[str, list[float]] = {key: [] for key in ("up api", "up http", "id api", "id http")}
            for i in range(args.warm):  # interleaved, so both sides see the same load
                samples["up api"].append(
                    timed(
                        lambda: library.search(library.query(data, model=name, name=jpeg.name), k=K, include_self=True)
                    )
                )
                samples["up http"].append(timed(lambda: upload(client)))
                # timed calls it now, with this iteration's i
                samples["id api"].append(timed(lambda: library.search(library.query(like=ids[i % K], model=name), k=K)))  # noqa: B023
                samples["id http"].append(timed(partial(similar, client, i)))
        rates = {
            (op, n): throughput(request, n, args.seconds)
            for op, request in (("similar", similar), ("upload", upload))
            for n in (1, 4, 16)
        }
    finally:
        stop_server(server)
    cli = [CLI, "query", str(library_dir / "photos" / jpeg.name), "-k", str(K), "-m", name, *common]
    cold = [timed_run(cli) for _ in range(args.cold)]

    stats = {key: percentiles(values) for key, values in samples.items()}
    print(f"\n{'warm, k=25':<30}{'in-process p50':>15}{'p95':>9}{'HTTP p50':>10}{'p95':>9}{'overhead p50':>14}")
    for label, key in (("search by upload (JPEG)", "up"), ("similar by id", "id")):
        (a50, a95), (h50, h95) = stats[f"{key} api"], stats[f"{key} http"]
        print(f"{label:<30}{_ms(a50):>15}{_ms(a95):>9}{_ms(h50):>10}{_ms(h95):>9}{_ms(h50 - a50):>14}")
    print(
        f"\ncold CLI `dreamsearch query FILE -k 25`: median {_ms(statistics.median(cold))} of {args.cold} "
        f"(min {_ms(min(cold))}, max {_ms(max(cold))})"
    )

    print("\ntargets")
    for label, key in (("upload", "up"), ("by id", "id")):
        overhead = stats[f"{key} http"][0] - stats[f"{key} api"][0]
        print(
            f"  HTTP overhead p50, {label:<7}<= 10 ms: {_ms(overhead):>9}  {'met' if overhead <= 0.010 else 'NOT met'}"
        )
    p95 = stats["id http"][1]
    print(f"  similar by id p95 (HTTP)  <= 30 ms: {_ms(p95):>9}  {'met' if p95 <= 0.030 else 'NOT met'}")

    print(f"\nthroughput over {args.seconds:g} s per case (requests/s, p50 latency under load)")
    print(f"{'clients':>8}{'similar by id':>24}{'search by upload':>26}")
    for n in (1, 4, 16):
        (r1, l1), (r2, l2) = rates[("similar", n)], rates[("upload", n)]
        print(f"{n:>8}{r1:>12.1f} req/s{_ms(l1):>10}{r2:>14.1f} req/s{_ms(l2):>10}")


if __name__ == "__main__":
    main()
