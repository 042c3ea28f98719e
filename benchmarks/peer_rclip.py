"""dreamsearch against rclip 4.x, its closest peer, on the same folder and the same CPUs.

For each tool, from a clean state each time (a fresh ``$RCLIP_DATADIR`` database, a fresh
dreamsearch library, the same seeded random weights), runs taking turns:
- first index of the folder: wall time, CPU time (user + sys of the child, from ``wait4``),
  files/s, CPU seconds per file, peak RSS (the child's own ``VmHWM``, read from ``/proc``
  while it runs: ``ru_maxrss`` would count this process's memory, copied at fork);
- its fixed cost: the same command on a 2-picture folder (start-up, model load), and from
  it the marginal files/s, which is what a large folder sees;
- a cold CLI query with a picture (process start to exit), top 25.
Then the medians and dreamsearch / rclip ratios. rclip has no index-only command: its first
index is ``rclip -f -t 1 QUERY.jpg`` in the folder (what indexes a folder), which also embeds
the query picture and searches (one image more than dreamsearch embeds). Its cold query is
``rclip -n -f -t 25 QUERY.jpg`` (``-n``: answer from the index, as ``dreamsearch query``
does) and, apart, without ``-n`` (rclip's default, which first checks the folder for changes).

Fair by construction: both children are pinned to the same ``--threads`` CPUs (rclip sizes
ONNX Runtime's pool from its CPU affinity; dreamsearch gets ``--threads`` for torch and
``OMP_NUM_THREADS``); each tool keeps its own defaults otherwise (rclip: batch 8, a loader
thread per core; dreamsearch: its batching and reading threads). Before timing, every
picture is read once (page cache) and each tool indexes a 2-picture folder once (weights in
the page cache, dreamsearch's weights hash cache filled), so no run pays a first-ever cost;
both run from compiled bytecode, as installed packages do (``compile_package``).
The run fails if either tool did not index every picture (rclip: its database is checked).

Networks, random weights of the real architectures on both sides: rclip runs OpenCLIP
ViT-B-32-256 through ONNX Runtime (files from ``benchmarks/rclip_weights.py``); dreamsearch
runs ``clip`` (OpenAI CLIP ViT-B/32 image tower at 224, torch) and its default ``dreamsim``
(three ViT-B/16 at 224: about 12x the transformer work of ``clip``, 9x rclip's). Random
weights cost what real ones do.

Setup (rclip 4.x needs Python >= 3.12; the dreamsearch venv is 3.11; no internet but PyPI)::

    ~/.pyenv/versions/3.12.1/bin/python -m venv /tmp/rclip-venv
    /tmp/rclip-venv/bin/pip install rclip==4.0.8
    . .venv/bin/activate           # the dreamsearch venv, for everything below
    pip install --no-deps --target /tmp/onnx-export-deps onnx ml_dtypes
    PYTHONPATH=/tmp/onnx-export-deps python benchmarks/rclip_weights.py /tmp/peer-rclip/rclip-model

Run (``--set`` generates a deterministic photo set once, cached under ``--work-dir``)::

    python benchmarks/peer_rclip.py --rclip /tmp/rclip-venv/bin/rclip --set wallpapers
    python benchmarks/peer_rclip.py --rclip /tmp/rclip-venv/bin/rclip --set camera --runs 3
    python benchmarks/peer_rclip.py --rclip /tmp/rclip-venv/bin/rclip --folder ~/Pictures --model clip --loaded

``--loaded`` keeps ``--burners`` busy processes running during the measurements (the
"loaded machine" case). The children inherit the environment: ``DREAMSEARCH_BACKEND=torch``
keeps dreamsearch on torch where the optional OpenVINO backend is installed; the header
prints the checkout's commit and which backend applies.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import rclip_weights  # noqa: E402
from benchmarks.index_throughput import compile_package, machine  # noqa: E402

#: rclip 4.x's extensions (``rclip/const.py``) and the folders it skips by default.
RCLIP_EXTENSIONS = {
    "jpg",
    "jpeg",
    "png",
    "webp",
    "heic",
    "tiff",
    "tif",
    "bmp",
    "gif",
    "jp2",
    "pnm",
    "pbm",
    "pgm",
    "ppm",
}
RCLIP_SKIPPED_DIRS = {"@eaDir", "node_modules", ".git", "System Volume Information"}
#: Pictures in the small folder that measures each tool's fixed cost (start-up, model load).
SMALL = 2

#: name -> (picture sizes, (suffix, PIL format, save options) cycle, seed base)
SETS = {
    "wallpapers": (
        ((2560, 1440), (3200, 1800), (3840, 2160)),
        (("jpg", "JPEG", {"quality": 92}), ("png", "PNG", {}), ("webp", "WEBP", {"quality": 90})),
        10_000,
    ),
    "camera": (((4000, 3000),), (("jpg", "JPEG", {"quality": 90}),), 20_000),
}


# photo sets --------------------------------------------------------------------------------


def _make_picture(job: tuple[str, int, int, int, str, dict]) -> None:
    from tests.helpers.images import photo_like

    path, width, height, seed, pil_format, options = job
    partial = Path(f"{path}.partial")
    photo_like(width, height, seed).save(partial, format=pil_format, **options)
    partial.replace(path)  # a picture is in the cache only once written whole


def make_set(folder: Path, name: str, count: int) -> None:
    """``count`` photo-like pictures, the same bytes on every machine; existing ones are kept."""
    sizes, formats, seed = SETS[name]
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        suffix, pil_format, options = formats[(i // len(sizes)) % len(formats)]
        path = folder / f"{name}{i:03d}.{suffix}"
        if not path.exists():
            jobs.append((str(path), width, height, seed + i, pil_format, options))
    if jobs:
        with multiprocessing.get_context("spawn").Pool() as pool:
            pool.map(_make_picture, jobs, chunksize=1)


def pictures(folder: Path) -> list[Path]:
    """The files both tools index: rclip's extensions, no hidden or skipped folders."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in RCLIP_SKIPPED_DIRS]
        found += [
            Path(directory, f)
            for f in files
            if not f.startswith(".") and f.rsplit(".", 1)[-1].lower() in RCLIP_EXTENSIONS
        ]
    return sorted(found)


# one measured child -------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    stdout: str
    stderr: str


def measure(command: list[str], cpus: set[int], cwd: Path | None = None, env: dict | None = None) -> Measure:
    """Run ``command`` pinned to ``cpus``; its wall time, its CPU time (user + sys, ``wait4``)
    and its own peak RSS (``VmHWM``, polled every 20 ms: the peak of this process image only)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        child = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=err, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
        )
        peak_kib = 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak_kib = max(peak_kib, _vm_hwm_kib(child.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - began
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {child.returncode}):\n{stderr[-3000:]}")
    return Measure(wall, usage.ru_utime + usage.ru_stime, peak_kib / 1024, stdout, stderr)


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next((int(line.split()[1]) for line in handle if line.startswith("VmHWM:")), 0)
    except OSError:  # gone between wait4 and here
        return 0


# the two tools ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    rclip: str
    rclip_model: Path
    weights: Path
    query: Path
    work: Path
    cpus: set[int]
    threads: int
    k: int

    def env(self, **extra: str) -> dict:
        return {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(self.threads),
            "PYTHONPATH": str(ROOT),
            **extra,
        }


def rclip_index(setup: Setup, folder: Path, expected: int) -> tuple[Measure, Path]:
    """rclip's first index of ``folder`` into a fresh data folder (model files linked in);
    fails unless its database holds every picture with a 512-float vector."""
    datadir = Path(tempfile.mkdtemp(prefix="rclip-data-", dir=setup.work))
    for entry in setup.rclip_model.iterdir():
        (datadir / entry.name).symlink_to(entry)
    result = measure(
        [setup.rclip, "-f", "-t", "1", str(setup.query)],
        setup.cpus,
        cwd=folder,
        env=setup.env(RCLIP_DATADIR=str(datadir)),
    )
    with sqlite3.connect(datadir / "db.sqlite3") as db:
        indexed = db.execute(
            "SELECT count(*) FROM images WHERE deleted IS NULL AND length(vector) = 2048 "
            "AND filepath LIKE ? ESCAPE '\\'",
            (_like_prefix(folder),),
        ).fetchone()[0]
    if indexed != expected:
        raise SystemExit(
            f"rclip indexed {indexed} of the {expected} pictures in {folder} "
            f"(database {datadir / 'db.sqlite3'}); its messages:\n{result.stderr[-2000:]}"
        )
    return result, datadir


def _like_prefix(folder: Path) -> str:
    text = str(folder.resolve()).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return text + os.sep + "%"


def rclip_query(setup: Setup, folder: Path, datadir: Path, check_index: bool) -> Measure:
    command = [setup.rclip, *([] if check_index else ["-n"]), "-f", "-t", str(setup.k), str(setup.query)]
    result = measure(command, setup.cpus, cwd=folder, env=setup.env(RCLIP_DATADIR=str(datadir)))
    _check_hits(len(result.stdout.splitlines()), setup.k, "rclip", folder)
    return result


def dreamsearch_index(setup: Setup, folder: Path, model: str, expected: int) -> tuple[Measure, Path]:
    library = Path(tempfile.mkdtemp(prefix="ds-library-", dir=setup.work))
    result = measure(
        [
            sys.executable,
            "-m",
            "dreamsearch",
            "index",
            str(folder),
            "-m",
            model,
            "--library",
            str(library),
            "--weights-dir",
            str(setup.weights),
            "--device",
            "cpu",
            "--threads",
            str(setup.threads),
            "--json",
            "-q",
        ],
        setup.cpus,
        env=setup.env(),
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    if summary["new"] != expected or summary["failed"] or summary["found"] != expected:
        raise SystemExit(f"dreamsearch ({model}) did not index the {expected} pictures in {folder}: {summary}")
    return result, library


def dreamsearch_query(setup: Setup, folder: Path, model: str, library: Path) -> Measure:
    result = measure(
        [
            sys.executable,
            "-m",
            "dreamsearch",
            "query",
            str(setup.query),
            "-k",
            str(setup.k),
            "-m",
            model,
            "--library",
            str(library),
            "--weights-dir",
            str(setup.weights),
            "--device",
            "cpu",
            "--jsonl",
        ],
        setup.cpus,
        env=setup.env(),
    )
    _check_hits(len(result.stdout.splitlines()), setup.k, f"dreamsearch ({model})", folder)
    return result


def _check_hits(hits: int, k: int, tool: str, folder: Path) -> None:
    wanted = min(k, len(pictures(folder)))
    if hits != wanted:
        raise SystemExit(f"{tool} answered {hits} results instead of {wanted}")


def rclip_round(setup: Setup, folder: Path, count: int, small: Path) -> dict:
    """One round of rclip from clean states: fixed cost, first index, cold queries."""
    fixed, datadir = rclip_index(setup, small, SMALL)
    shutil.rmtree(datadir)
    index, datadir = rclip_index(setup, folder, count)
    cold = rclip_query(setup, folder, datadir, check_index=False)
    checked = rclip_query(setup, folder, datadir, check_index=True)
    shutil.rmtree(datadir)
    return _row(fixed, index, cold) | {"query_checked_s": checked.wall_s}


def dreamsearch_round(setup: Setup, folder: Path, count: int, small: Path, model: str) -> dict:
    fixed, library = dreamsearch_index(setup, small, model, SMALL)
    shutil.rmtree(library)
    index, library = dreamsearch_index(setup, folder, model, count)
    cold = dreamsearch_query(setup, folder, model, library)
    shutil.rmtree(library)
    return _row(fixed, index, cold)


def _row(fixed: Measure, index: Measure, cold: Measure) -> dict:
    return {
        "fixed_s": fixed.wall_s,
        "index_s": index.wall_s,
        "cpu_s": index.cpu_s,
        "rss_mib": index.peak_rss_mib,
        "query_s": cold.wall_s,
        "query_rss_mib": cold.peak_rss_mib,
    }


def marginal(row: dict, count: int) -> float:
    """Files/s once started: the fixed cost (start-up, model load) taken off."""
    return (count - SMALL) / max(row["index_s"] - row["fixed_s"], 1e-9)


# the run ------------------------------------------------------------------------------------


def _write_dreamsearch_weights(root: str, models: list[str]) -> None:
    """Seeded random weights in the official layouts (run in a child: torch stays out of here)."""
    from dreamsearch.models.registry import MODELS
    from dreamsearch.models.weights import missing_files
    from tests.helpers.official_layout import write_clip_checkpoint, write_official_cache

    for name in models:
        if missing_files(MODELS[name], Path(root)):
            if name == "clip":
                write_clip_checkpoint(Path(root), seed=3)
            elif name == "dreamsim":
                write_official_cache(Path(root), "ensemble", seed=3)
            else:
                raise SystemExit(f"--model {name}: this benchmark writes weights for clip and dreamsim only")


def burners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions(rclip: str) -> str:
    from importlib.metadata import version

    python = Path(rclip).with_name("python")
    rclip_side = (
        subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('rclip'), m.version('onnxruntime'))"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if python.exists()
        else []
    )
    rclip_side = rclip_side or ["?", "?"]
    commit = (
        subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    backend = os.environ.get("DREAMSEARCH_BACKEND", "unset")
    openvino = "installed" if importlib.util.find_spec("openvino") else "not installed"
    return (
        f"rclip {rclip_side[0]} (onnxruntime {rclip_side[1]}); dreamsearch {commit} with torch {version('torch')}, "
        f"DREAMSEARCH_BACKEND {backend}, openvino {openvino}"
    )


def report(label: str, runs: list[dict], count: int) -> dict:
    """Medians over the runs (with the spread of the index time), as one printed line."""
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    walls = [run["index_s"] for run in runs]
    queries = f"cold query {med['query_s']:.2f} s"
    if "query_checked_s" in med:
        queries += f" (without -n: {med['query_checked_s']:.2f} s)"
    print(
        f"  {label:<22} index {med['index_s']:6.1f} s (runs {min(walls):.1f}-{max(walls):.1f}), CPU "
        f"{med['cpu_s']:6.1f} s, {count / med['index_s']:5.2f} files/s, {med['cpu_s'] / count:.2f} CPU s/file, "
        f"fixed cost {med['fixed_s']:.1f} s, marginal {marginal(med, count):.2f} files/s, "
        f"peak RSS {med['rss_mib']:5.0f} MiB; {queries}, query peak RSS {med['query_rss_mib']:.0f} MiB"
    )
    return med


def ratios(ours: dict, rclip: dict, count: int) -> str:
    return (
        f"files/s {rclip['index_s'] / ours['index_s']:.2f}x "
        f"(marginal {marginal(ours, count) / marginal(rclip, count):.2f}x), "
        f"CPU s/file {ours['cpu_s'] / rclip['cpu_s']:.2f}x, peak RSS {ours['rss_mib'] / rclip['rss_mib']:.2f}x, "
        f"cold query {ours['query_s'] / rclip['query_s']:.2f}x (against rclip -n; "
        f"{ours['query_s'] / rclip['query_checked_s']:.2f}x against its default)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rclip", required=True, help="the rclip command (of a Python >= 3.12 venv)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--folder", type=Path, help="a folder of pictures")
    where.add_argument("--set", choices=list(SETS), help="a generated photo set (cached under --work-dir)")
    parser.add_argument("--count", type=int, default=100, help="pictures in a generated --set")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--model",
        action="append",
        choices=["clip", "dreamsim"],
        help="dreamsearch models, in turn against rclip (default: clip and dreamsim)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPUs both tools are pinned to")
    parser.add_argument("--loaded", action="store_true", help="run --burners busy processes meanwhile")
    parser.add_argument("--burners", type=int, default=8)
    parser.add_argument("-k", type=int, default=25)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "peer-rclip")
    parser.add_argument(
        "--rclip-model",
        type=Path,
        default=None,
        help="rclip's model files (default: WORK/rclip-model; see benchmarks/rclip_weights.py)",
    )
    args = parser.parse_args()
    models = args.model or ["clip", "dreamsim"]
    work = args.work_dir.resolve()
    rclip_model = (args.rclip_model or work / "rclip-model").resolve()
    if not rclip_weights.is_complete(rclip_model):
        raise SystemExit(
            f"{rclip_model}: rclip's model files are missing; write them with "
            f"`PYTHONPATH=/tmp/onnx-export-deps python benchmarks/rclip_weights.py {rclip_model}`"
        )
    compile_package()  # rclip runs from the bytecode its pip install compiled; so does dreamsearch
    allowed = sorted(os.sched_getaffinity(0))
    if args.threads > len(allowed):
        raise SystemExit(f"--threads {args.threads}: only {len(allowed)} CPUs are available")
    work.mkdir(parents=True, exist_ok=True)

    from tests.helpers.images import photo_folder, photo_like

    folder = (args.folder or work / args.set).resolve()
    if args.set:
        began = time.perf_counter()
        make_set(folder, args.set, args.count)
        print(f"set {args.set}: ready in {time.perf_counter() - began:.0f} s")
    files = pictures(folder)
    if not files:
        raise SystemExit(f"{folder}: no pictures rclip would index")
    query = work / "query.jpg"
    photo_like(1920, 1080, 7).save(query, quality=90)
    weights = work / "ds-weights"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_write_dreamsearch_weights, (str(weights), models))
    setup = Setup(args.rclip, rclip_model, weights, query, work, set(allowed[: args.threads]), args.threads, args.k)

    size = sum(f.stat().st_size for f in files)
    kinds = sorted({f.suffix.lower() for f in files})
    print(f"machine: {machine()}; load average {load()} (1, 5, 15 min) at the start")
    print(
        f"{versions(args.rclip)}; both pinned to CPUs {sorted(setup.cpus)}, {args.threads} threads; "
        f"{'LOADED: ' + str(args.burners) + ' busy processes' if args.loaded else 'quiet case (no burners)'}"
    )
    print(
        f"folder {folder}: {len(files)} pictures ({', '.join(kinds)}), {size / len(files) / 1e6:.1f} MB each; "
        f"query {query.name} 1920x1080; k {args.k}; {args.runs} runs, tools taking turns"
    )

    for path in files:  # page cache: no tool is the first to read from disk
        path.read_bytes()
    warmup = photo_folder(work / "warmup", SMALL, (640, 480), 1, "w{}.jpg", quality=90)
    _result, datadir = rclip_index(setup, warmup, SMALL)
    shutil.rmtree(datadir)
    for model in models:
        _result, library = dreamsearch_index(setup, warmup, model, SMALL)
        shutil.rmtree(library)

    busy = burners(args.burners) if args.loaded else []
    results: dict[str, list[dict]] = {"rclip": []} | {f"dreamsearch {m}": [] for m in models}
    try:
        for run in range(1, args.runs + 1):
            results["rclip"].append(rclip_round(setup, folder, len(files), warmup))
            for model in models:
                results[f"dreamsearch {model}"].append(dreamsearch_round(setup, folder, len(files), warmup, model))
            print(
                f"run {run}: "
                + "; ".join(
                    f"{label} {rows[-1]['index_s']:.1f} s wall, {rows[-1]['cpu_s']:.1f} s CPU"
                    for label, rows in results.items()
                )
                + f"; load average {load()}"
            )
    finally:
        for process in busy:
            process.kill()
            process.wait()

    print(
        f"\nmedians of {args.runs} runs ({len(files)} pictures; fixed cost = the same index command on a "
        f"{SMALL}-picture 640x480 folder; marginal = (pictures - {SMALL}) / (index - fixed cost)):"
    )
    medians = {label: report(label, rows, len(files)) for label, rows in results.items()}
    print("\ndreamsearch / rclip (files/s: > 1 is faster; CPU s/file, peak RSS, cold query: < 1 is less):")
    for model in models:
        label = f"dreamsearch {model}"
        print(f"  {model:<9} medians: {ratios(medians[label], medians['rclip'], len(files))}")
        best = {key: {k: min(row[k] for row in results[key]) for k in results[key][0]} for key in (label, "rclip")}
        print(f"  {model:<9} best run of each (least disturbed): {ratios(best[label], best['rclip'], len(files))}")
    print(f"load average {load()} at the end")


if __name__ == "__main__":
    main()
