"""Latency of a text query (``query --text``, issue 25) on CPU, against an image query of
the same ``clip`` model measured in the same run.

- cold: ``dreamsearch query --text WORDS`` from process start to exit (``--no-server``):
  imports, the catalog, the checkpoint read, the text tower built, one query; beside it
  ``dreamsearch query PHOTO -m clip --no-server``, which builds the image tower instead.
- warm: ``Library.query(text=...)`` + ``search`` with the tower loaded (the API), and
  ``POST /api/search/text`` to a running ``dreamsearch serve --models clip`` (the first
  request builds the tower and is reported apart); beside them the same photo as an image
  query through ``Library.query`` and ``POST /api/search``.

Weights: a full-size OpenAI CLIP ViT-B/32 with seeded random values in OpenAI's own
TorchScript layout (``tests/helpers/official_layout.py``; needs the test extra), so the
model's cost is the real one. The library holds ``--photos`` small JPEGs.

    python benchmarks/text_query.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.index_throughput import machine, scratch_dir  # noqa: E402
from benchmarks.serve_latency import CLI, ROOT, start_server, stop_server  # noqa: E402

TEXT = "ramen in a paper bowl on a wooden table"


def cold(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(
        command, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    )
    return time.perf_counter() - began


def median_ms(operation, runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        operation()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="cold CLI runs per side")
    parser.add_argument("--warm-runs", type=int, default=30, help="warm queries per side")
    parser.add_argument("--photos", type=int, default=200)
    args = parser.parse_args()

    from dreamsearch import Library
    from tests.helpers.images import photo_folder
    from tests.helpers.official_layout import write_openai_clip

    work = scratch_dir("dreamsearch-text-query-")
    weights, library, photos = work / "weights", work / "lib", work / "photos"
    write_openai_clip(weights)
    photo_folder(photos, args.photos, (320, 240), 1, "p{:04d}.jpg", quality=85)
    photo = photos / "p0000.jpg"
    common = ["--library", str(library), "--weights-dir", str(weights), "--device", "cpu"]
    subprocess.run(
        [CLI, "index", str(photos), "-m", "clip", "--quiet", *common],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    print(
        f"{machine()}, load average {os.getloadavg()[0]:.1f}; OpenAI CLIP ViT-B/32 (random weights), "
        f"{args.photos} photos"
    )

    text_cmd = [CLI, "query", "--text", TEXT, "-k", "10", "--no-server", *common]
    image_cmd = [CLI, "query", str(photo), "-m", "clip", "-k", "10", "--no-server", *common]
    text_s, image_s = [], []
    for _ in range(args.runs):  # alternated: the machine's load falls on both sides alike
        text_s.append(cold(text_cmd))
        image_s.append(cold(image_cmd))
    t, i = statistics.median(text_s), statistics.median(image_s)
    print(f"cold CLI (start to exit), median of {args.runs}: text {t:.2f} s, image {i:.2f} s, text/image {t / i:.2f}")

    with Library.open(library, weights_dir=weights, device="cpu") as lib:
        began = time.perf_counter()
        lib.search(lib.query(text=TEXT), k=10)
        first = time.perf_counter() - began
        lib.search(lib.query(photo, model="clip"), k=10)
        text_ms = median_ms(lambda: lib.search(lib.query(text=TEXT), k=10), args.warm_runs)
        image_ms = median_ms(lambda: lib.search(lib.query(photo, model="clip"), k=10), args.warm_runs)
    print(
        f"API, first text query (builds the tower) {first:.2f} s; warm median of {args.warm_runs}: "
        f"text {text_ms:.1f} ms, image {image_ms:.1f} ms, text/image {text_ms / image_ms:.2f}"
    )

    server, url = start_server([CLI, "serve", "--port", "0", "--models", "clip", *common], work / "serve.log")
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            began = time.perf_counter()
            client.post("api/search/text", json={"text": TEXT, "k": 10}).raise_for_status()
            first = time.perf_counter() - began
            data = photo.read_bytes()

            def text() -> None:
                client.post("api/search/text", json={"text": TEXT, "k": 10}).raise_for_status()

            def image() -> None:
                client.post("api/search", files={"image": ("q.jpg", data)}, data={"k": "10"}).raise_for_status()

            image()
            text_ms, image_ms = median_ms(text, args.warm_runs), median_ms(image, args.warm_runs)
    finally:
        stop_server(server)
    print(
        f"HTTP, first text request (builds the tower) {first:.2f} s; warm median of {args.warm_runs}: "
        f"text {text_ms:.1f} ms, image upload {image_ms:.1f} ms, text/image {text_ms / image_ms:.2f}"
    )


if __name__ == "__main__":
    main()
