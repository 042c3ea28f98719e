"""Find, download and import model weights. The only module that touches weight files'
whereabouts or the network.

A file is only ever moved into the weights directory once it is complete: downloads and
imports go to a temporary file beside their destination, are checked (length, sha256 when
it is published, zip CRCs or a full ``torch.load``), then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from dreamsearch.atomic import staged_file, write_atomically
from dreamsearch.display import configured_path
from dreamsearch.errors import WeightsError
from dreamsearch.models.registry import ModelSpec, WeightFile

ENV_WEIGHTS = "DREAMSEARCH_WEIGHTS"
ENV_OFFLINE = "DREAMSEARCH_OFFLINE"
#: In the weights folder: the files imported with ``--no-verify`` (relpath -> sha256).
UNVERIFIED = "unverified.json"
#: In the weights folder: each file's sha256, with the stat it was read at (a cache).
HASHES = "sha256.json"
#: What starts a :func:`fingerprint` (a :func:`legacy_fingerprint` has no prefix).
FINGERPRINT_SCHEME = "sha256:"
_CHUNK = 1 << 20
Member = TypeVar("Member")  # what a table of candidate files maps names to
#: ``(path, size, mtime_ns, ctime_ns, inode) -> sha256`` of the weight files hashed here.
_hashed: dict[tuple, str] = {}


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The weights directory: ``explicit``, else ``$DREAMSEARCH_WEIGHTS``, else the user cache."""
    return configured_path(explicit, ENV_WEIGHTS, "cache", "weights")


def missing_files(spec: ModelSpec, root: Path) -> list[WeightFile]:
    return [f for f in spec.files if not (root / f.path).is_file()]


def installed_size(spec: ModelSpec, root: Path) -> int:
    """Bytes on disk of the files this model reads (0 for absent ones)."""
    return sum((root / f.path).stat().st_size for f in spec.files if (root / f.path).is_file())


def fingerprint(spec: ModelSpec, root: Path) -> str:
    """Identifies the exact weights by every byte of their files, so a library never mixes
    vectors from different weights under one model name (``Catalog.ensure_model`` refuses
    them): ``sha256:`` and a digest of the model's name and each file's sha256 (computed
    once, see :func:`file_sha256`). A file imported with ``--no-verify`` is marked as such:
    one's own weights are kept apart even from byte-identical published ones."""
    unverified = unverified_files(root)
    digest = hashlib.sha256(spec.name.encode())
    for weight in spec.files:
        digest.update(f"{weight.path}:{file_sha256(root, weight.path)}".encode())
        if weight.path in unverified:
            digest.update(f"not published:{unverified[weight.path]}".encode())
    return FINGERPRINT_SCHEME + digest.hexdigest()


def legacy_fingerprint(spec: ModelSpec, root: Path) -> str:
    """The fingerprint libraries made before whole-file hashing store (name, size, first
    and last MiB of each file). It cannot tell apart files that differ only in the middle,
    so it only recognises those libraries, which are then re-stamped with :func:`fingerprint`."""
    unverified = unverified_files(root)
    digest = hashlib.sha256(spec.name.encode())
    for weight in spec.files:
        path = root / weight.path
        size = path.stat().st_size
        digest.update(f"{weight.path}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_CHUNK))
            handle.seek(max(0, size - _CHUNK))
            digest.update(handle.read(_CHUNK))
        if weight.path in unverified:
            digest.update(f"not published:{unverified[weight.path]}".encode())
    return digest.hexdigest()


def file_sha256(root: Path, relpath: str) -> str:
    """The sha256 of weight file ``root/relpath``, read once: kept in ``root/HASHES`` (and
    in this process) under the file's size, mtime, ctime and inode, so the next process
    does not read hundreds of MB again, and a file written, touched or replaced is hashed
    again. A weights folder that cannot be written is hashed once per process."""
    path = root / relpath
    stat = path.stat()
    key = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    memo = (str(path), *key)
    if memo in _hashed:
        return _hashed[memo]
    cache = _hash_cache(root)
    entry = cache.get(relpath)
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
        digest = entry["sha256"]
    else:
        digest = _sha256(path)
        cache[relpath] = {"stat": key, "sha256": digest}
        try:
            write_atomically(root / HASHES, json.dumps(cache, indent=1))
        except OSError:
            pass  # a read-only weights folder: hashed again by the next process
    _hashed[memo] = digest
    return digest


def _hash_cache(root: Path) -> dict:
    """``root/HASHES``, or nothing when it is missing or unreadable (it is only a cache)."""
    try:
        cache = json.loads((root / HASHES).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def unverified_files(root: Path) -> dict[str, str]:
    """The weight files imported with ``--no-verify`` (not the published weights), by
    relative path, with their sha256."""
    try:
        return json.loads((root / UNVERIFIED).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{root / UNVERIFIED}: unreadable ({exc})") from None


def _record_provenance(root: Path, written: list[Path], verified: bool) -> None:
    """Note the files just written as published (checked) or not, for ``fingerprint``."""
    record = unverified_files(root)
    before = dict(record)
    for path in written:
        relpath = path.relative_to(root).as_posix()
        if verified:
            record.pop(relpath, None)
        else:
            record[relpath] = _sha256(path)
    if record == before:
        return
    write_atomically(root / UNVERIFIED, json.dumps(record, indent=1))


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in (ENV_OFFLINE, "HF_HUB_OFFLINE"))


def ensure_weights(spec: ModelSpec, root: Path, allow_download: bool = True) -> Path:
    """Return ``root`` once every file of ``spec`` is present, downloading what is missing
    when allowed and possible; otherwise raise a :class:`WeightsError` that says what is
    missing, where it comes from and how to import it."""
    missing = missing_files(spec, root)
    if not missing:
        return root
    if allow_download and not offline():
        try:
            fetch(spec, root)
            return root
        except _NetworkError as exc:
            raise WeightsError(_missing_message(spec, root, missing, str(exc))) from None
    raise WeightsError(_missing_message(spec, root, missing, "downloads are disabled (offline)"))


def _missing_message(spec: ModelSpec, root: Path, missing: list[WeightFile], why: str) -> str:
    urls = sorted({f.url for f in missing})
    return (
        f"model '{spec.name}' needs weights missing from {root}: "
        + ", ".join(f.path for f in missing)
        + f"; {why}. Download "
        + " and ".join(urls)
        + f" on a connected machine, then run `dreamsearch models import {spec.name} PATH"
        + f" --weights-dir {root}` (PATH: the zip, the file, or a folder such as an official"
        + " DreamSim cache_dir)."
    )


class _NetworkError(Exception):
    """The download could not reach its server (as opposed to a broken file)."""


def fetch(spec: ModelSpec, root: Path, progress: bool = True) -> list[Path]:
    """Download every missing file of ``spec`` into ``root``; returns the paths written.
    ``root`` is created only once a server answers: a failed download (offline, when a
    query or ``embed`` needs weights) leaves no empty folder behind."""
    written: list[Path] = []
    missing = missing_files(spec, root)
    for url in dict.fromkeys(f.url for f in missing):
        wanted = [f for f in missing if f.url == url]
        with _connect(url) as response:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
                target = Path(tmp) / url.rsplit("/", 1)[-1]
                _download(response, url, target, progress)
                if wanted[0].in_archive:
                    written += _install_from_zip(target, wanted, root, url)
                else:
                    _check_file(target, wanted[0], url)
                    written.append(_move_into_place(target, root / wanted[0].path))
    _record_provenance(root, written, verified=True)
    return written


def _connect(url: str):
    """The server's answer to a GET of ``url``; no answer is a ``_NetworkError``."""
    try:
        return urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _NetworkError(f"cannot download {url} ({reason})") from None


def _download(response, url: str, target: Path, progress: bool) -> None:
    """Save an answering server's ``response`` to ``target``, refusing a short or broken one."""
    expected = int(response.headers.get("Content-Length") or 0)
    received = 0
    with _progress_bar(progress, url.rsplit("/", 1)[-1], expected) as advance, target.open("wb") as out:
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                advance(len(chunk))
        except (OSError, urllib.error.URLError) as exc:
            raise WeightsError(f"download of {url} broke off after {received:,} bytes ({exc})") from None
        out.flush()
        os.fsync(out.fileno())
    if expected and received != expected:
        raise WeightsError(f"download of {url} is incomplete: {received:,} of {expected:,} bytes")


@contextmanager
def _progress_bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n_bytes)`` callback drawing a rich bar on stderr (or nothing)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda n: bar.advance(task, n)


def _check_file(path: Path, expected: WeightFile, origin: str, verify: bool = True, hint: str = "") -> None:
    """Refuse a file that is not the complete, readable checkpoint it claims to be: the
    published sha256 where there is one (unless ``verify`` is off: one's own weights),
    else a full read. ``hint`` ends a checksum mismatch's message."""
    if expected.sha256_prefix and verify:
        digest = _sha256(path)
        if not digest.startswith(expected.sha256_prefix):
            raise WeightsError(
                f"{origin}: sha256 {digest[:16]}… does not match the published {expected.sha256_prefix[:16]}…{hint}"
            )
        return
    if path.name.endswith(".json"):
        import json

        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise WeightsError(f"{origin}: not valid JSON ({exc})") from None
        return
    if path.name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{origin}: not a readable safetensors file ({exc})") from None
        return
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many error types for broken files
        raise WeightsError(f"{origin}: not a complete, readable checkpoint ({exc})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _install_from_zip(archive: Path, wanted: list[WeightFile], root: Path, origin: str) -> list[Path]:
    """Verify every CRC of ``archive`` and move the ``wanted`` files from it into ``root``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise WeightsError(f"{origin}: damaged zip (bad CRC in {bad})")
            members = _zip_members(zf)
            with tempfile.TemporaryDirectory(dir=root, prefix=".unzip-") as tmp:
                picked = []
                for wanted_file in wanted:
                    member = _find_member(members, wanted_file.path)
                    if member is None:
                        raise WeightsError(f"{origin}: the zip has no {wanted_file.path}")
                    extracted = Path(tmp) / wanted_file.path
                    extracted.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, extracted.open("wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    picked.append((extracted, wanted_file))
                return [_move_into_place(src, root / f.path) for src, f in picked]
    except (zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"{origin}: not a complete zip file ({exc})") from None
    except zlib.error as exc:  # compressed data that testzip() cannot even inflate
        raise WeightsError(f"{origin}: damaged zip ({exc})") from None
    except OSError as exc:
        raise WeightsError(f"{origin}: cannot unpack into {root} ({exc})") from None


def _zip_members(zf: zipfile.ZipFile) -> dict[str, str]:
    return _by_suffix((info.filename, info.filename) for info in zf.infolist() if not info.is_dir())


def _by_suffix(entries: Iterable[tuple[str, object]]) -> dict:
    """Index items by every tail of their path, so ``x/ensemble_lora/adapter_config.json``
    is found as ``ensemble_lora/adapter_config.json`` (zips and copies often add a folder)."""
    table: dict = {}
    for relpath, item in entries:
        parts = relpath.split("/")
        for start in range(len(parts)):
            table.setdefault("/".join(parts[start:]), item)
    return table


def _find_member(table: dict[str, Member], relpath: str) -> Member | None:
    """Look ``relpath`` up by full path, or by bare name for backbone checkpoints (whose
    names are unique; adapter files are only ever matched with their folder)."""
    if relpath in table:
        return table[relpath]
    parent, _, name = relpath.rpartition("/")
    return None if parent.endswith("lora") else table.get(name)


def _move_into_place(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(destination) as staged:
        shutil.move(str(source), staged)
    return destination


def import_weights(spec: ModelSpec, root: Path, source: Path, verify: bool = True) -> list[Path]:
    """Copy the files ``spec`` needs from ``source`` (a zip, a single file, or a folder such
    as an official DreamSim ``cache_dir``) into ``root``; returns the paths written.
    ``verify=False`` (``--no-verify``) takes weights that are not the published ones (one's
    own, fine-tuned): no published checksum is asked of them, and they are recorded as
    such, so their vectors are kept apart from those of the published weights."""
    written = _import(spec, root, source, verify)
    _record_provenance(root, written, verify)
    return written


def _import(spec: ModelSpec, root: Path, source: Path, verify: bool) -> list[Path]:
    source = Path(source).expanduser()
    if not source.exists():
        raise WeightsError(f"{source}: no such file or folder")
    root.mkdir(parents=True, exist_ok=True)
    missing = missing_files(spec, root)
    if not missing:
        return []
    # A torch checkpoint is a zip too, so only a ``.zip`` name marks a release archive.
    if source.is_file() and source.suffix.lower() == ".zip":
        return _install_from_zip_partial(source, missing, root)
    if source.is_dir():
        candidates = _folder_candidates(source)
    else:  # a model of one file takes it whatever its name (my-finetune.pt)
        candidates = {spec.files[0].path if len(spec.files) == 1 else source.name: source}
    written = []
    for wanted in missing:
        found = _find_member(candidates, wanted.path)
        if found is None:
            continue
        with tempfile.TemporaryDirectory(dir=root, prefix=".import-") as tmp:
            staged = Path(tmp) / found.name
            shutil.copyfile(found, staged)
            _check_file(
                staged,
                wanted,
                str(found),
                verify,
                hint=(
                    "; if they are your own (fine-tuned) weights: "
                    f"`dreamsearch models import {spec.name} PATH --no-verify`"
                ),
            )
            written.append(_move_into_place(staged, root / wanted.path))
    if not written:
        raise WeightsError(
            f"{source} holds none of the files model '{spec.name}' needs: " + ", ".join(f.path for f in missing)
        )
    return written


def _install_from_zip_partial(archive: Path, missing: list[WeightFile], root: Path) -> list[Path]:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _zip_members(zf)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"{archive}: not a complete zip file ({exc})") from None
    except OSError as exc:
        raise WeightsError(f"{archive}: cannot read ({exc})") from None
    present = [f for f in missing if _find_member(members, f.path) is not None]
    if not present:
        raise WeightsError(f"{archive} holds none of: " + ", ".join(f.path for f in missing))
    return _install_from_zip(archive, present, root, str(archive))


def _folder_candidates(folder: Path) -> dict[str, Path]:
    return _by_suffix((path.relative_to(folder).as_posix(), path) for path in _walk_files(folder))


def _walk_files(folder: Path) -> Iterable[Path]:
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            yield Path(dirpath) / name
