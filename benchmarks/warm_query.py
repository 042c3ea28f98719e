"""``dreamsearch query IMG -k 25`` from the shell, with and without a running server of
the same library (issue 23: a CLI query against a running server <= 1 s on the default
model), measured in the same run, alternated.

Both sides are the CLI from process start to exit: ``--no-server`` loads the model in the
process (the cold path), the other hands the embedding to ``dreamsearch serve`` through its
private socket (``dreamsearch.warm``). The library is ``serve_latency.py``'s: seeded random
weights in the official layout, synthetic clustered vectors plus one real JPEG, which is
the query; the printed results of both sides are checked to be the same.

The CLI runs as an installed package does, from compiled bytecode (``pip install``
compiles it): this project's machines set ``PYTHONDONTWRITEBYTECODE=1``, which in an
editable checkout made every run compile the ~60 dreamsearch modules a query imports
again (~0.08 s; 1.01-1.06 s against 0.96-0.97 s through the server, 2026-12-04).

    python benchmarks/warm_query.py --model dreamsim --vectors 100000 --runs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.index_throughput import compile_package, scratch_dir  # noqa: E402
from benchmarks.query_latency import ROOT, TYPES  # noqa: E402
from benchmarks.serve_latency import CLI, prepare_library, start_server, stop_server  # noqa: E402


def run_query(command: list[str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    return time.perf_counter() - began, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dreamsim", choices=sorted(TYPES))
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5, help="CLI runs per side")
    parser.add_argument("--work-dir", type=Path, default=None, help="reuse a library built before")
    args = parser.parse_args()
    compile_package()

    from tests.helpers.images import photo_like
    from tests.helpers.official_layout import write_official_cache

    name = args.model
    work = args.work_dir or scratch_dir("dreamsearch-warm-query-")
    work.mkdir(parents=True, exist_ok=True)
    weights, library, jpeg = work / "weights", work / f"lib-{name}-{args.vectors}", work / "ramen.jpg"
    write_official_cache(weights, TYPES[name], seed=5)
    if not library.exists():
        photo_like(640, 480, 7).save(jpeg, quality=90)
        prepare_library(library, weights, name, args.vectors, jpeg, "cpu")
    query = [
        CLI,
        "query",
        str(jpeg),
        "-k",
        "25",
        "-m",
        name,
        "--library",
        str(library),
        "--weights-dir",
        str(weights),
        "--device",
        "cpu",
    ]
    print(
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"model {name}, {args.vectors:,} vectors; CLI from process start to exit, {args.runs} runs per side"
    )
    server, _url = start_server(
        [
            CLI,
            "serve",
            "--port",
            "0",
            "--models",
            name,
            "--library",
            str(library),
            "--weights-dir",
            str(weights),
            "--device",
            "cpu",
        ],
        work / "serve.log",
    )
    times: dict[str, list[float]] = {"in process (--no-server)": [], "through the running server": []}
    try:
        for _ in range(args.runs):
            cold, cold_out = run_query([*query, "--no-server"])
            warm, warm_out = run_query(query)
            if warm_out != cold_out:
                raise SystemExit(f"the two sides printed different results:\n{cold_out}\n---\n{warm_out}")
            times["in process (--no-server)"].append(cold)
            times["through the running server"].append(warm)
    finally:
        stop_server(server)
    for label, seconds in times.items():
        print(f"{label}: median {statistics.median(seconds):.2f} s, min {min(seconds):.2f} s, max {max(seconds):.2f} s")
    cold, warm = (statistics.median(s) for s in times.values())
    print(f"through the server / in process: {warm / cold:.2f}x (target: through the server <= 1 s)")


if __name__ == "__main__":
    main()
