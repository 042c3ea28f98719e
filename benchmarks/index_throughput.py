"""Ingest speed and memory of ``dreamsearch index``, each figure a ratio to a baseline
measured in the same run, on generated corpora and seeded random weights (official layout).

For each model (the ensemble and dreamsim-dino by default) and each corpus:
- pure decode: read + decode + resize alone, one thread and all decode threads (and, on
  CUDA, the batched GPU JPEG decoder);
- pure embedding: the model alone on ready pixels;
- end to end: ``index_folders`` in a child process (so its peak RSS is its own), split
  into start-up (until the first batch is committed, model load included) and steady state;
  read GB/s, GPU busy %, peak RSS. With ``--gpu-decode``, three ways to decode: the CPU
  threads alone; the batched JPEG decoder taking every JPEG it can while the threads only
  read and hash (main before ``device_decode.CALLS_WAITING``); and the decoder with the
  threads decoding the files that would only wait for it (now).
Then peak RSS against corpus size (``--rss``), with the tiny pipeline model: memory is the
pipeline's, not the model's.

Corpora: ``camera`` = 12 MP camera-like JPEGs (q90, ~4 MB); ``mixed`` = a third each of
phone HEIC (2000x1500), PNG screenshots (1920x1080) and web JPEGs (1200x800, q80).

    python benchmarks/index_throughput.py --camera 1000 --mixed 300            # CPU
    python benchmarks/index_throughput.py --camera 5000 --mixed 1000 --device cuda --gpu-decode
    python benchmarks/index_throughput.py --engine ray --models dreamsim-dino --camera 400 --mixed 0 --naive 0 --rss ''

``--engine ray`` runs each end-to-end case twice, on the local engine and on a Ray cluster of
this machine that the run starts itself (start-up included), and prints Ray / local.

``--backends torch openvino int8`` runs each end-to-end case once per way of computing the
vectors, in turns for ``--rounds`` rounds: float32 torch (what ``main`` ran before the
OpenVINO backend), float32 OpenVINO, and ``--precision int8``; it prints the medians and
their ratios to torch, the OpenVINO fidelity (max |diff| to torch) and the int8 gates
(``dreamsearch.models.agreement``) on the corpus's first 40 pictures:

    python benchmarks/index_throughput.py --models dreamsim --camera 60 --mixed 0 --naive 0 --rss '' \
        --backends torch openvino int8 --rounds 2
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

OFFICIAL_TYPES = {"dreamsim": "ensemble", "dreamsim-dino": "dino_vitb16"}
#: Where files are decoded in an end-to-end case (``--decode-cases``; the device ones need
#: ``--gpu-decode``).
DECODE_LABELS = {
    "cpu": "CPU decode threads",
    "device-only": "batched JPEG decoder takes every JPEG it can (before)",
    "shared": "batched JPEG decoder + CPU threads while it is behind (now)",
}


# corpora -------------------------------------------------------------------------------


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 64), max(1, width // 64), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_file(job: tuple[str, str, int]) -> None:
    path, kind, seed = job
    if kind == "camera":
        Image.fromarray(_texture(4000, 3000, seed)).save(path, quality=90)
    elif kind == "heic":
        from pillow_heif import register_heif_opener

        register_heif_opener()
        Image.fromarray(_texture(2000, 1500, seed)).save(path, quality=85)
    elif kind == "medium":
        Image.fromarray(_texture(1600, 1200, seed)).save(path, quality=85)
    elif kind == "screenshot":
        rng = np.random.default_rng(seed)
        screen = np.full((1080, 1920, 3), rng.integers(200, 256, 3), dtype=np.uint8)
        for _ in range(40):  # flat panels and text-like bars
            x, y = rng.integers(0, 1800), rng.integers(0, 1040)
            screen[y : y + rng.integers(8, 200), x : x + rng.integers(40, 600)] = rng.integers(0, 256, 3)
        Image.fromarray(screen).save(path)
    else:  # small web JPEG
        Image.fromarray(_texture(1200, 800, seed)).save(path, quality=80)


def make_corpus(folder: Path, kind: str, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("camera", "medium"):
        plan = [(folder / f"{kind}{i:05d}.jpg", kind, i) for i in range(count)]
    else:
        kinds = [("heic", "heic"), ("screenshot", "png"), ("web", "jpg")]
        plan = [(folder / f"{kinds[i % 3][0]}{i:05d}.{kinds[i % 3][1]}", kinds[i % 3][0], i) for i in range(count)]
    todo = [(str(p), k, s) for p, k, s in plan if not p.exists()]
    with multiprocessing.get_context("spawn").Pool() as pool:
        pool.map(make_file, todo, chunksize=4)
    return [p for p, _k, _s in plan]


# measurements ----------------------------------------------------------------------------


def pure_decode(paths: list[Path], recipes, threads: int) -> float:
    from dreamsearch.images import DEFAULT_MAX_PIXELS, decode_bytes
    from dreamsearch.reading import read_file

    def one(path: Path) -> None:
        read = read_file(str(path))
        _ = read.content_hash
        decode_bytes(str(path), read.data, recipes, DEFAULT_MAX_PIXELS, draft=True)

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - began)


def pure_gpu_decode(paths: list[Path], recipes, batch: int, device: str) -> float:
    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder, gpu_route

    decoder = JpegBatchDecoder(device)
    blobs = [p.read_bytes() for p in paths]
    blobs = [b for b in blobs if gpu_route(b) is None]
    decoder.decode(blobs[:batch], recipes)  # warm-up
    began = time.perf_counter()
    for start in range(0, len(blobs), batch):
        decoder.decode(blobs[start : start + batch], recipes)
    return len(blobs) / (time.perf_counter() - began)


def gpu_agreement(paths: list[Path], model, device: str) -> str:
    """GPU against CPU decoding of the same JPEGs: pixels (max, mean /255) and embeddings
    (minimum cosine), and what the driver says of its JPEG engines (torchvision does not
    report how many it uses)."""
    from dreamsearch.images import DEFAULT_MAX_PIXELS, decode_bytes
    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder, gpu_route

    blobs = [(p, p.read_bytes()) for p in paths]
    blobs = [(p, b) for p, b in blobs if gpu_route(b) is None]
    if not blobs:
        return "no baseline JPEG in this corpus for the GPU decoder"
    recipes = (model.preprocess_spec,)
    gpu = JpegBatchDecoder(device).decode([b for _p, b in blobs], recipes)
    cpu = [decode_bytes(str(p), b, recipes, DEFAULT_MAX_PIXELS, draft=True).pixels[0] for p, b in blobs]
    pairs = [(g[2][0], c) for g, c in zip(gpu, cpu, strict=True) if not isinstance(g, str)]
    difference = np.stack([np.abs(g.astype(np.int16) - c.astype(np.int16)) for g, c in pairs])
    ours, reference = model.embed(np.stack([g for g, _c in pairs])), model.embed(np.stack([c for _g, c in pairs]))
    cosine = float(np.min(np.sum(ours * reference, axis=1)))
    try:
        engines = subprocess.run(["nvidia-smi", "-q", "-d", "UTILIZATION"], capture_output=True, text=True).stdout
    except OSError:
        engines = ""
    jpeg = "; ".join(line.strip() for line in engines.splitlines() if "JPG" in line or "JPEG" in line) or "not listed"
    return (
        f"GPU vs CPU decode on {len(pairs)} JPEGs ({len(gpu) - len(pairs)} fell back): pixels max "
        f"{difference.max()}/255, mean {difference.mean():.3f}/255; embeddings min cosine {cosine:.6f}; "
        f"nvidia-smi JPEG lines: {jpeg}"
    )


def pure_embedding(model, batch_size: int, device: str) -> float:
    import torch

    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8)
    model.embed(pixels)  # warm-up
    rounds = max(2, 512 // batch_size) if device == "cuda" else 2
    began = time.perf_counter()
    for _ in range(rounds):
        model.embed(pixels)
    if device == "cuda":
        torch.cuda.synchronize()
    return rounds * batch_size / (time.perf_counter() - began)


def end_to_end(
    folder: Path,
    weights: Path,
    model: str,
    args,
    library: Path,
    decode: str = "cpu",
    engine: str = "local",
    backend: str = "torch",
) -> dict:
    """``index_folders`` in a child process; its own peak RSS and timings come back."""
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(
            {
                "folder": str(folder),
                "weights": str(weights),
                "model": model,
                "library": str(library),
                "device": args.device,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "gpu_decode": None if decode == "cpu" else args.device,
                "device_only": decode == "device-only",
                "calls_waiting": args.calls_waiting,
                "batches_ahead": args.batches_ahead,
                "engine": engine,
                "backend": backend,
            }
        ),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def child(spec: dict) -> None:
    began = time.perf_counter()
    os.environ["DREAMSEARCH_BACKEND"] = "torch" if spec["backend"] == "torch" else "openvino"
    import dreamsearch.indexer.device_decode as device_decode
    import dreamsearch.indexer.local_engine as local_engine
    from dreamsearch.indexer.gpu_decode import JpegBatchDecoder

    if spec.get("device_only"):  # what main did before: every file the device can take waits for it
        device_decode.CALLS_WAITING = 10**9
    elif spec.get("calls_waiting") is not None:
        device_decode.CALLS_WAITING = spec["calls_waiting"]
    if spec.get("batches_ahead") is not None:
        local_engine.BATCHES_AHEAD = spec["batches_ahead"]
    on_device = count_device_files(JpegBatchDecoder)
    from dreamsearch.indexer import IndexOptions, index_folders
    from dreamsearch.layout import LibraryLayout
    from dreamsearch.models import PendingModel

    handle = PendingModel(
        spec["model"],
        weights_dir=spec["weights"],
        device=spec["device"],
        precision="int8" if spec["backend"] == "int8" else "fp32",
    )
    options = IndexOptions(
        batch_size=spec["batch_size"],
        gpu_decode=spec["gpu_decode"],
        engine=spec["engine"],
        **({} if spec["workers"] is None else {"workers": spec["workers"]}),
    )
    first: list[tuple[float, int]] = []

    def progress(report) -> None:
        if report.embedded and not first:
            first.append((time.perf_counter(), report.embedded))

    sampler = GpuSampler() if spec["device"] == "cuda" else None
    report = index_folders(
        LibraryLayout.prepare(Path(spec["library"])), [Path(spec["folder"])], [handle], options, progress
    )
    ended = time.perf_counter()
    steady = (report.embedded - first[0][1]) / (ended - first[0][0]) if first else 0.0
    print(
        json.dumps(
            {
                "embedded": report.embedded,
                "failed": report.failed,
                "seconds": ended - began,
                "startup_s": first[0][0] - began if first else None,
                "steady_img_s": steady,
                "workers": options.workers,
                "gpu_busy": sampler.stop() if sampler else None,
                "device_files": sum(on_device),
                "peak_rss_mib": peak_rss_kib() / 1024,
            }
        )
    )


def count_device_files(decoder_class) -> list[int]:
    """The batched decoder's files, call by call, counted as it runs."""
    counts: list[int] = []
    decode = decoder_class.decode

    def counted(self, blobs, recipes):
        counts.append(len(blobs))
        return decode(self, blobs, recipes)

    decoder_class.decode = counted
    return counts


def peak_rss_kib() -> int:
    """VmHWM, this process's own peak (``ru_maxrss`` would carry the parent's over exec)."""
    with open("/proc/self/status") as handle:
        return int(next(line for line in handle if line.startswith("VmHWM:")).split()[1])


class GpuSampler:
    """GPU utilisation every 0.2 s (NVML through torch)."""

    def __init__(self) -> None:
        import torch

        self.samples: list[int] = []
        self.done = threading.Event()

        def loop() -> None:
            while not self.done.wait(0.2):
                try:
                    self.samples.append(torch.cuda.utilization())
                except Exception:  # no NVML here
                    return

        threading.Thread(target=loop, daemon=True).start()

    def stop(self) -> float | None:
        self.done.set()
        return float(np.mean(self.samples)) if self.samples else None


def naive_loop(weights: Path, dreamsim_type: str, paths: list[Path], device: str) -> float:
    """What the official README leads to: open, preprocess, embed one image at a time."""
    import torch

    from tests.helpers.official_layout import official_model

    official, preprocess = official_model(weights, dreamsim_type, device)
    with torch.no_grad():
        official.embed(preprocess(Image.open(paths[0])).to(device))
        began = time.perf_counter()
        for path in paths:
            official.embed(preprocess(Image.open(path)).to(device))
        if device == "cuda":
            torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - began)


BACKENDS = {"torch": ("torch", "fp32"), "openvino": ("openvino", "fp32"), "int8": ("openvino", "int8")}


def compare_backends(args, work: Path, corpora: dict) -> None:
    """Each model and corpus end to end once per backend, in turns; medians and ratios."""
    from dreamsearch.models import PendingModel
    from dreamsearch.models.agreement import in_batches, measure
    from tests.helpers.official_layout import write_official_cache

    for name in args.models:
        weights = work / f"weights-{name}"
        write_official_cache(weights, OFFICIAL_TYPES[name], seed=3)
        for kind, (paths, _size) in corpora.items():
            by_backend = {}
            for backend in args.backends:  # converts and saves each graph once, before any timing
                os.environ["DREAMSEARCH_BACKEND"], precision = BACKENDS[backend]
                by_backend[backend] = PendingModel(name, weights_dir=weights, device="cpu", precision=precision)
                by_backend[backend].load()
            recipe = by_backend[args.backends[0]].preprocess_spec
            pixels = np.stack([recipe(Image.open(path).convert("RGB")) for path in paths[:40]])
            reference = by_backend[args.backends[0]].torch_reference()
            for backend, pending in by_backend.items():
                vectors, expected = pending.load().embed(pixels[:8]), reference.embed(pixels[:8])
                diff = np.abs(vectors - expected).max()
                line = f"  {name}, {backend} ({pending.load().backend}): max |diff| to torch {diff:.1e}"
                if backend == "int8" and len(pixels) >= 40:
                    gates = measure(
                        in_batches(reference.embed, pixels),
                        pending.load().embed,
                        pixels,
                        pending.spec.duplicate_distance,
                    )
                    line += f"; int8 gates on {len(pixels)} pictures: {gates}; failing: {gates.failures() or 'none'}"
                print(line)
            del by_backend, reference
            runs: dict[str, list[dict]] = {backend: [] for backend in args.backends}
            for round_number in range(args.rounds):
                for backend in args.backends:
                    library = Path(tempfile.mkdtemp(prefix="lib-", dir=work))
                    result = end_to_end(work / kind, weights, name, args, library, backend=backend)
                    runs[backend].append(result)
                    print(
                        f"  round {round_number + 1}, {backend}: {result['embedded'] / result['seconds']:.2f} img/s "
                        f"overall ({result['seconds']:.1f} s), steady {result['steady_img_s']:.2f} img/s, "
                        f"peak RSS {result['peak_rss_mib']:.0f} MiB; load average {_loadavg()}"
                    )
            overall = {b: float(np.median([r["embedded"] / r["seconds"] for r in rs])) for b, rs in runs.items()}
            steady = {b: float(np.median([r["steady_img_s"] for r in rs])) for b, rs in runs.items()}
            base = args.backends[0]
            print(f"\n== {name}, {kind} ({len(paths)} files), medians of {args.rounds} rounds, ratios to {base}:")
            for backend in args.backends:
                print(
                    f"  {backend:<9} overall {overall[backend]:6.2f} img/s ({overall[backend] / overall[base]:.2f}x), "
                    f"steady {steady[backend]:6.2f} img/s ({steady[backend] / steady[base]:.2f}x)"
                )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def scratch_dir(prefix: str) -> Path:
    """A temporary folder removed when the benchmark exits: full-size weights, corpora and
    libraries left behind by runs without ``--work-dir`` filled this machine's disk (with
    old pytest folders, 60 GB of /tmp on 2026-12-04)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def compile_package() -> None:
    """Compile dreamsearch's modules, as ``pip install`` does, so that the CLI children a
    benchmark times run as an installed package runs. This project's machines set
    ``PYTHONDONTWRITEBYTECODE=1``, under which an editable checkout compiled again, in every
    child, the modules it imports (~60 for a query: 0.08 s a run, 2026-12-04)."""
    import compileall

    compileall.compile_dir(ROOT / "dreamsearch", quiet=1)


def machine() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()} cores"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {' '.join(wanted) or 'no avx2'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dreamsim", "dreamsim-dino"], choices=list(OFFICIAL_TYPES))
    parser.add_argument("--camera", type=int, default=1000, help="12 MP JPEGs")
    parser.add_argument("--mixed", type=int, default=300, help="HEIC + PNG + web JPEG")
    parser.add_argument("--rss", default="1000,4000", help="corpus sizes for the memory check ('' skips it)")
    parser.add_argument("--naive", type=int, default=30, help="camera images for the official naive loop (0 skips)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--gpu-decode", action="store_true")
    parser.add_argument(
        "--decode-cases",
        nargs="+",
        choices=list(DECODE_LABELS),
        default=list(DECODE_LABELS),
        help="the end-to-end cases to run (the device ones with --gpu-decode only)",
    )
    parser.add_argument(
        "--calls-waiting", type=float, default=None, help="try another device_decode.CALLS_WAITING (shared case)"
    )
    parser.add_argument(
        "--batches-ahead", type=int, default=None, help="try another local_engine.BATCHES_AHEAD (every case)"
    )
    parser.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="ray: also run each end-to-end case on a Ray cluster of this machine",
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=list(BACKENDS),
        default=None,
        help="compare these ways of computing the vectors end to end (see above)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="turns per backend with --backends")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep corpora and weights between runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    from dreamsearch.models import load_model
    from tests.helpers.official_layout import write_official_cache, write_tiny_cache

    work = args.work_dir or scratch_dir("dreamsearch-ingest-bench-")
    print(f"machine: {machine()}; device {args.device}; gpu decode {'on' if args.gpu_decode else 'off'}")
    corpora = {}
    for kind, count in (("camera", args.camera), ("mixed", args.mixed)):
        if count:
            began = time.perf_counter()
            paths = make_corpus(work / kind, kind, count)
            size = sum(p.stat().st_size for p in paths)
            corpora[kind] = (paths, size)
            print(
                f"corpus {kind}: {count} files, {size / count / 1e6:.2f} MB each (made in "
                f"{time.perf_counter() - began:.0f} s)"
            )
    if args.backends:
        compare_backends(args, work, corpora)
        return
    for name in args.models:
        weights = work / f"weights-{name}"
        write_official_cache(weights, OFFICIAL_TYPES[name], seed=3)
        model = load_model(name, weights_dir=weights, device=args.device)
        recipes = (model.preprocess_spec,)
        embed_rate = pure_embedding(model, args.batch_size, args.device)
        print(f"\n== {name}: pure embedding {embed_rate:.2f} img/s (batch {args.batch_size})")
        for kind, (paths, size) in corpora.items():
            sample = paths[: min(len(paths), 60)]
            one = pure_decode(sample, recipes, 1)
            workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
            many = pure_decode(paths[: min(len(paths), 240)], recipes, workers)
            line = f"  {kind}: pure decode {one:.1f} img/s (1 thread), {many:.1f} img/s ({workers} threads)"
            if args.gpu_decode:
                gpu = pure_gpu_decode(paths[: min(len(paths), 1000)], recipes, args.batch_size, args.device)
                line += f", batched JPEG decoder on {args.device} {gpu:.1f} img/s"
            print(line)
            if args.gpu_decode:
                print("  " + gpu_agreement(paths[:128], model, args.device))
            best = 0.0
            cases = [("local", d) for d in args.decode_cases if d == "cpu" or args.gpu_decode]
            cases += [("ray", "cpu")] * (args.engine == "ray")
            results = {}
            for engine, decode in cases:
                library = Path(tempfile.mkdtemp(prefix="lib-", dir=work))
                result = results[engine, decode] = end_to_end(work / kind, weights, name, args, library, decode, engine)
                seconds = result["seconds"]
                best = max(best, result["embedded"] / seconds)
                ceiling = min(many + (gpu if decode != "cpu" else 0.0), embed_rate)
                busy = f", GPU busy {result['gpu_busy']:.0f}%" if result["gpu_busy"] is not None else ""
                label = f"{kind}, {DECODE_LABELS[decode]}"
                if decode == "shared" and args.calls_waiting is not None:
                    label += f", CALLS_WAITING {args.calls_waiting:g}"
                if args.batches_ahead is not None:
                    label += f", BATCHES_AHEAD {args.batches_ahead}"
                if decode != "cpu":
                    label += f" ({result['device_files'] / result['embedded']:.0%} of files decoded on the device)"
                if engine == "ray":
                    label = f"{kind}, Ray engine (decode tasks + one embed actor)"
                print(
                    f"  {label}: end to end {result['embedded'] / seconds:.2f} img/s overall, steady "
                    f"{result['steady_img_s']:.2f} img/s after {result['startup_s']:.1f} s start-up; "
                    f"read {size / seconds / 1e9:.3f} GB/s; peak RSS {result['peak_rss_mib']:.0f} MiB{busy}"
                )
                print(
                    f"  {label}: steady / pure embedding = {result['steady_img_s'] / embed_rate:.2f}; "
                    f"steady / min(decode, embedding) = {result['steady_img_s'] / ceiling:.2f}"
                )
            if ("ray", "cpu") in results:
                local, ray = results["local", "cpu"], results["ray", "cpu"]
                print(
                    f"  {kind}: Ray / local = {local['seconds'] / ray['seconds']:.2f} end to end "
                    f"({ray['seconds']:.1f} s against {local['seconds']:.1f} s), "
                    f"{ray['steady_img_s'] / local['steady_img_s']:.2f} in steady state"
                )
            if kind == "camera" and args.naive:
                naive = naive_loop(weights, OFFICIAL_TYPES[name], paths[: args.naive], args.device)
                print(
                    f"  camera: naive official loop {naive:.2f} img/s ({args.naive} images); "
                    f"end to end overall (the faster above) / naive = {best / naive:.2f}x"
                )
        del model
    sizes = [int(s) for s in args.rss.split(",") if s]
    if sizes:
        tiny = write_tiny_cache(work / "weights-tiny")
        print("\n== peak RSS against corpus size (tiny dreamsim-dino: the pipeline's memory; 1600x1200 JPEGs)")
        for count in sizes:
            folder = work / f"rss{count}"
            make_corpus(folder, "medium", count)
            result = end_to_end(folder, tiny, "dreamsim-dino", args, Path(tempfile.mkdtemp(prefix="lib-", dir=work)))
            print(
                f"  {count} files: peak RSS {result['peak_rss_mib']:.0f} MiB, {result['embedded']} embedded in "
                f"{result['seconds']:.0f} s"
            )


if __name__ == "__main__":
    main()
