"""``dreamsearch serve`` under load (issue 21's load targets), against a baseline build.

Each server runs from its own source tree (``PYTHONPATH`` set to it) on 127.0.0.1 over the
same library, with the load client on the same machine; nothing else is contacted:

- ``GET /api/files/{id}/similar`` with 32 and then 128 clients: p50 / p99, errors
  (target: p99 <= 1 s with 32 clients);
- light routes while heavy ones are saturated: 64 uncached thumbnails of large PNG/WebP
  files at once plus 8 upload clients, while one client per route asks health, status,
  file metadata and similar-by-id every 50 ms (target: p99 <= 100 ms). ``/api/status`` is
  also timed alone, idle: this library keeps its 100k photos inside the library folder,
  which status used to walk;
- uploads with 16 clients (14 send a 16 MP WebP, 2 a 196 MP 1-bit PNG of 30 KB): answers,
  503s, slowest answer, and the server's RSS before, at peak and after;
- RSS after every burst, against its start (target: within 20%).

The library is ``serve_latency.py``'s (synthetic clustered vectors, random weights in the
official layout, every file on disk) plus 16 large photos, indexed for real.

    python benchmarks/serve_load.py --baseline /tmp/serve-before --work-dir /tmp/serve-load
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import httpx  # noqa: E402

from benchmarks.index_throughput import scratch_dir  # noqa: E402
from benchmarks.query_latency import ROOT, TYPES  # noqa: E402
from benchmarks.serve_latency import prepare_library, stop_server  # noqa: E402
from dreamsearch.indexer import IndexOptions

MODEL = "dreamsim-dino"
BIG = 16  # large photos in the library (thumbnails are made from them)
THUMB_SIZES = (128, 256, 512, 1024)  # valid before and after: 16 x 4 = 64 uncached thumbnails


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """The server's resident memory, sampled every 20 ms: its peak over a stretch."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return

    def mark(self) -> float:
        """Start a new stretch; the RSS now."""
        self.peak = now = rss_mb(self.pid)
        return now


def settled_rss(pid: int, seconds: float = 5.0) -> float:
    """RSS once the burst's stragglers are done (the lowest over ``seconds``)."""
    lowest = rss_mb(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        lowest = min(lowest, rss_mb(pid))
    return lowest


class Load:
    """``clients`` threads, each its own connection, calling ``request`` for ``seconds``
    (``seconds=None``: once each); after a 503 a client waits its ``Retry-After`` (5 s at
    most), as a well-behaved client does."""

    def __init__(
        self, request: Callable[[httpx.Client, int], httpx.Response], clients: int, seconds: float | None
    ) -> None:
        self.latencies: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        deadline = time.monotonic() + (seconds or 0)

        def worker(number: int) -> None:
            with httpx.Client(timeout=120) as client:
                while True:
                    began = time.perf_counter()
                    try:
                        response = request(client, number)
                        self.statuses[response.status_code] += 1
                        if response.status_code == 200:
                            self.latencies.append(time.perf_counter() - began)
                        elif response.status_code == 503:  # a well-behaved client comes back later
                            time.sleep(min(5.0, float(response.headers.get("retry-after", 1))))
                    except httpx.HTTPError as exc:
                        self.errors[type(exc).__name__] += 1
                    if seconds is None or time.monotonic() >= deadline:
                        return

        self.threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def join(self) -> Load:
        for thread in self.threads:
            thread.join()
        return self

    def summary(self) -> str:
        served = sorted(self.latencies)
        if not served:
            return f"no answer {dict(self.statuses)} errors {dict(self.errors)}"
        p = lambda q: served[min(len(served) - 1, int(q * len(served)))]  # noqa: E731
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(self.statuses.items()))
        errors = f", errors {dict(self.errors)}" if self.errors else ""
        return f"p50 {_ms(p(0.5))}, p99 {_ms(p(0.99))}, max {_ms(served[-1])}; {len(served)} answered ({codes}{errors})"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def big_photos(folder: Path) -> list[Path]:
    """16 large photo-like files, PNG and WebP alternately (no reduced decode for either)."""
    from tests.helpers.images import photo_like

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(BIG):
        path = folder / (f"big{i:02d}.png" if i % 2 else f"big{i:02d}.webp")
        if not path.exists():
            picture = photo_like(400, 300, 100 + i).resize((4000, 3000))
            picture.save(path, **({} if i % 2 else {"quality": 85}))
        paths.append(path)
    return paths


def uploads(work: Path) -> tuple[bytes, bytes]:
    from tests.helpers.images import photo_like

    webp, bomb = work / "upload-16mp.webp", work / "upload-196mp-1bit.png"
    if not webp.exists():
        photo_like(490, 330, 9).resize((4900, 3300)).save(webp, quality=85)
    if not bomb.exists():
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("1", (14_000, 14_000)).save(buffer, "PNG")
        bomb.write_bytes(buffer.getvalue())
    return webp.read_bytes(), bomb.read_bytes()


def prepare(work: Path, vectors: int) -> tuple[Path, Path, Path]:
    from dreamsearch.api import Library
    from tests.helpers.images import photo_like
    from tests.helpers.official_layout import write_official_cache

    weights, library, jpeg = work / "weights", work / f"lib-{vectors}", work / "ramen.jpg"
    write_official_cache(weights, TYPES[MODEL], seed=5)
    if not library.exists():
        photo_like(640, 480, 7).save(jpeg, quality=90)
        prepare_library(library, weights, MODEL, vectors, jpeg, "cpu")
        big_photos(work / "big")
        with Library.open(library, weights_dir=weights, device="cpu") as opened:
            opened.index([work / "big"], models=[MODEL], options=IndexOptions(workers=1))
    return weights, library, work / "big"


def start(tree: Path, library: Path, weights: Path, log: Path) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "dreamsearch",
        "serve",
        "--port",
        "0",
        "--library",
        str(library),
        "--weights-dir",
        str(weights),
        "--models",
        MODEL,
        "--device",
        "cpu",
    ]
    with open(log, "w") as stderr:
        server = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
        )
    found = re.search(r"http://127\.0\.0\.1:\d+", server.stdout.readline())
    if not found:
        server.kill()
        raise SystemExit(f"{tree}: serve printed no URL; see {log}")
    url = found.group(0)
    httpx.get(url + "/api/health", timeout=300).raise_for_status()
    return server, url


CASES = ("similar", "saturated", "uploads")


def measure(
    tree: Path,
    library: Path,
    weights: Path,
    work: Path,
    seconds: float,
    bombs: int,
    args_vectors: int,
    cases: tuple[str, ...] = CASES,
) -> list[str]:
    webp, bomb = uploads(work)
    server, url = start(tree, library, weights, work / f"serve-{tree.name}.log")
    lines: list[str] = []
    try:
        rss = RssSampler(server.pid)
        with httpx.Client(base_url=url, timeout=60) as client:
            ids = [
                r["id"]
                for r in client.post(
                    "/api/search", files={"image": ("q.jpg", (work / "ramen.jpg").read_bytes())}, data={"k": "25"}
                ).json()["results"]
            ]
            big = {
                client.post("/api/search", files={"image": (p.name, p.read_bytes())}, data={"k": "1"}).json()[
                    "results"
                ][0]["id"]
                for p in sorted((work / "big").iterdir())
            }
        start_rss = settled_rss(server.pid, 2)
        lines.append(f"RSS at start (warm, one search and one upload of each big photo done): {start_rss:.0f} MB")

        def similar(client: httpx.Client, n: int) -> httpx.Response:
            return client.get(f"{url}/api/files/{ids[n % len(ids)]}/similar", params={"k": 25})

        def burst(label: str, load: Callable[[], str]) -> None:
            before = rss.mark()
            result = load()
            after = settled_rss(server.pid)
            lines.append(f"{label}: {result}")
            lines.append(
                f"  RSS before {before:.0f} MB, peak {rss.peak:.0f} MB, after {after:.0f} MB "
                f"({after / start_rss:.2f}x the start)"
            )

        for clients in (32, 128) if "similar" in cases else ():
            burst(
                f"similar by id, {clients} clients, {seconds:g} s",
                lambda: Load(similar, clients, seconds).join().summary(),  # noqa: B023 - burst calls it now
            )

        def saturated() -> str:
            shutil.rmtree(library / "thumbnails", ignore_errors=True)  # every thumbnail uncached
            pairs = [(i, s) for i in sorted(big) for s in THUMB_SIZES]
            thumbs = Load(
                lambda c, n: c.get(f"{url}/api/files/{pairs[n][0]}/thumbnail", params={"size": pairs[n][1]}),
                len(pairs),
                None,
            )
            up = Load(lambda c, n: c.post(f"{url}/api/search", files={"image": ("u.webp", webp)}), 8, seconds)
            light = probe_light(seconds)
            thumbs.join(), up.join()
            return (
                f"{light}\n  idle, for comparison: {idle}"
                f"\n  64 uncached thumbnails: {thumbs.summary()}\n  8 upload clients: {up.summary()}"
            )

        routes = {
            "health": "/api/health",
            "status": "/api/status",
            "file": f"/api/files/{ids[0]}",
            "similar": f"/api/files/{ids[0]}/similar?k=25",
        }

        def probe_light(seconds: float) -> str:
            """One client per light route, each asking it in turn every 50 ms (a slow status
            walk does not hold the health probe back)."""
            light: dict[str, list[float]] = collections.defaultdict(list)
            deadline = time.monotonic() + seconds

            def probe(name: str, path: str) -> None:
                with httpx.Client(base_url=url, timeout=120) as client:
                    while time.monotonic() < deadline:
                        began = time.perf_counter()
                        client.get(path).raise_for_status()
                        light[name].append(time.perf_counter() - began)
                        time.sleep(0.05)

            probes = [threading.Thread(target=probe, args=item) for item in routes.items()]
            for thread in probes:
                thread.start()
            for thread in probes:
                thread.join()
            parts = []
            for name, samples in light.items():
                samples.sort()
                parts.append(
                    f"{name} p50 {_ms(samples[len(samples) // 2])} p99 "
                    f"{_ms(samples[min(len(samples) - 1, int(0.99 * len(samples)))])} ({len(samples)})"
                )
            return "light routes (p50, p99, requests): " + "; ".join(parts)

        if "saturated" in cases:
            idle = probe_light(min(seconds, 5))
            with httpx.Client(base_url=url, timeout=120) as client:  # alone: it walks the library folder
                began = time.perf_counter()
                client.get("/api/status").raise_for_status()
                lines.append(
                    f"GET /api/status alone, idle: {_ms(time.perf_counter() - began)} (the library "
                    f"folder holds the {args_vectors:,} photos here: see the module docstring)"
                )
            burst(f"light routes while heavy ones are saturated, {seconds:g} s", saturated)

        def upload_burst() -> str:
            pictures = [
                lambda c, n: c.post(f"{url}/api/search", files={"image": ("u.webp", webp)}),
                lambda c, n: c.post(f"{url}/api/search", files={"image": ("bomb.png", bomb)}),
            ]
            webps = Load(pictures[0], 16 - bombs, seconds)
            bombs_load = Load(pictures[1], bombs, seconds)
            webps.join(), bombs_load.join()
            return (
                f"\n  16 MP WebP ({16 - bombs} clients): {webps.summary()}\n  196 MP 1-bit PNG ({bombs} clients): "
                f"{bombs_load.summary()}"
            )

        if "uploads" in cases:
            burst(f"uploads, 16 clients, {seconds:g} s", upload_burst)
        rss.done.set()
    finally:
        stop_server(server)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="source tree of the build to compare with (a git worktree)")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per load case")
    parser.add_argument("--bombs", type=int, default=2, help="of the 16 upload clients, those sending the 196 MP PNG")
    parser.add_argument("--work-dir", type=Path, default=None, help="reuse a library built before")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="load cases to run")
    args = parser.parse_args()

    work = args.work_dir or scratch_dir("dreamsearch-serve-load-")
    work.mkdir(parents=True, exist_ok=True)
    weights, library, _big = prepare(work, args.vectors)
    print(
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores; model {MODEL}, "
        f"{args.vectors:,} vectors + {BIG} large photos (4000x3000 PNG/WebP); load client on the same machine"
    )
    trees = [("this build", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for label, tree in trees:
        print(f"\n== {label}: {tree}")
        for line in measure(tree, library, weights, work, args.seconds, args.bombs, args.vectors, tuple(args.cases)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
