"""Never silently wrong, second pass (issue 20): a changed photo is noticed however it was
changed, one file on disk is one file whatever names reach it, no value from the file
system crashes a run, and failures whose cause can pass are retried."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from dreamsearch.api import Library
from dreamsearch.catalog import Catalog
from dreamsearch.duplicates import summarize
from dreamsearch.errors import NotFoundError
from dreamsearch.layout import LibraryLayout
from tests.helpers.cli import SHELL_COMMAND, invoke_as_user
from tests.helpers.images import photo_folder, photo_like
from tests.helpers.indexing import index
from tests.helpers.mounts import in_mount_namespace

MODEL = "dreamsim-dino"


def same_size_jpeg(seed: int, size: int) -> bytes:
    """A JPEG of another picture, padded after its end marker to exactly ``size`` bytes."""
    buffer = io.BytesIO()
    photo_like(96, 72, seed).save(buffer, "JPEG", quality=60)
    data = buffer.getvalue()
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


def rewrite_keeping_size_and_mtime(path: Path, data: bytes, how: str) -> None:
    """What an editor or ``exiftool -P`` does: other bytes, same size, old mtime put back."""
    before = path.stat()
    assert len(data) == before.st_size
    if how == "in place":
        with open(path, "r+b") as handle:
            handle.write(data)
    else:  # written beside and moved over it: a new inode
        staged = path.with_name(path.name + ".new")
        staged.write_bytes(data)
        os.replace(staged, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


# a changed photo is noticed ------------------------------------------------------------


@pytest.mark.parametrize("how", ["in place", "moved over"])
def test_a_same_size_edit_with_the_mtime_restored_is_read_again(tmp_path, tiny_model, how):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg", quality=90)
    shutil.copy2(photos / "p0.jpg", photos / "copy.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    rewrite_keeping_size_and_mtime(photos / "copy.jpg", same_size_jpeg(50, (photos / "p0.jpg").stat().st_size), how)

    report = index(library, photos, tiny_model)
    assert (report.changed, report.embedded, report.unchanged) == (1, 1, 2)
    with Library.open(library.root) as api:
        assert api.duplicates(MODEL, max_distance=0.0) == []  # two distinct photos, not a byte copy
        distances = {
            m.path: m.distance for m in api.search(api.query(like=photos / "p0.jpg", model=MODEL), k=5).matches
        }
        assert distances[str(photos / "copy.jpg")] > 0  # its own result now, with its own vector


def test_a_file_only_touched_in_place_costs_a_read_and_no_embedding(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    os.chmod(photos / "p1.jpg", 0o600)  # a new ctime, the same bytes
    report = index(library, photos, tiny_model)
    assert (report.read, report.embedded, report.unchanged, report.changed) == (1, 0, 3, 0)
    assert index(library, photos, tiny_model).read == 0  # the new ctime was stored


def test_a_query_like_a_file_edited_since_it_was_indexed_refuses_the_old_vector(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    with Library.open(library.root) as api:
        edited_id = next(
            m.id
            for m in api.search(api.query(like=photos / "p1.jpg", model=MODEL), k=5).matches
            if m.path == str(photos / "p0.jpg")
        )
    photo_like(120, 90, 77).save(photos / "p0.jpg")  # new size and mtime, not indexed again

    for args in (
        ["query", "--like", str(photos / "p0.jpg"), "-m", MODEL],
        ["query", "--like", str(photos / "p0.jpg"), "--like", str(photos / "p1.jpg"), "--combine", "mean", "-m", MODEL],
    ):
        result = invoke_as_user(tiny_weights, library.root, *args)
        assert result.exit_code != 0, args
        assert result.stderr.count("\n") == 1 and "changed since it was indexed" in result.stderr, result.stderr
    with Library.open(library.root) as api:
        with pytest.raises(NotFoundError, match="changed since it was indexed"):
            api.query(like=photos / "p0.jpg", model=MODEL)
        with pytest.raises(NotFoundError):
            api.query(like=edited_id, model=MODEL)
        with pytest.raises(NotFoundError, match="changed since it was indexed"):
            api.compare(None, [MODEL, MODEL], like=photos / "p0.jpg")  # as compare --like


def test_a_query_like_a_file_moved_over_with_size_and_mtime_kept_refuses_the_old_vector(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg", quality=90)
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    rewrite_keeping_size_and_mtime(
        photos / "p0.jpg", same_size_jpeg(60, (photos / "p0.jpg").stat().st_size), "moved over"
    )
    with Library.open(library.root) as api:
        with pytest.raises(NotFoundError, match="changed since it was indexed"):
            api.query(like=photos / "p0.jpg", model=MODEL)
        assert [
            m.path for m in api.search(api.query(like=photos / "p1.jpg", model=MODEL), k=5).matches
        ] == []  # never named as a result


# one file is one file ------------------------------------------------------------------


def identical(api: Library) -> list:
    return [g for g in api.duplicates(MODEL, max_distance=0.0) if g.kind == "identical"]


def test_a_hard_link_is_not_a_copy_and_its_bytes_are_not_counted_freed(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    os.link(photos / "p0.jpg", photos / "link.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    with Library.open(library.root) as api:
        assert identical(api) == []
        shutil.copy2(photos / "p0.jpg", photos / "real-copy.jpg")
    index(library, photos, tiny_model)
    with Library.open(library.root) as api:
        [group] = identical(api)
        assert len(group.files) == 2 and {f.path for f in group.files} >= {str(photos / "real-copy.jpg")}
        names = {group.keeper.path, *group.keeper.links}
        assert names == {str(photos / "p0.jpg"), str(photos / "link.jpg")}
        assert summarize([group]).removable_bytes == (photos / "p0.jpg").stat().st_size
        match = api.search(api.query(like=photos / "p1.jpg", model=MODEL), k=5).matches[0]
        assert len(match.also_at) == 1 and len(match.links) == 1  # one real copy, one more name


def test_a_followed_symlink_is_never_a_copy_nor_the_keeper(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    (photos / "album").mkdir()
    (photos / "album" / "a-link.jpg").symlink_to(photos / "p1.jpg")
    (photos / "0-link.jpg").symlink_to(photos / "p0.jpg")  # sorts before its target
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model, follow_symlinks=True)
    with Library.open(library.root) as api:
        assert identical(api) == []
        shutil.copy2(photos / "p0.jpg", photos / "z-copy.jpg")
    index(library, photos, tiny_model, follow_symlinks=True)
    with Library.open(library.root) as api:
        [group] = identical(api)
        assert group.keeper.path == str(photos / "p0.jpg")  # the target, never the link
        assert group.keeper.links == (str(photos / "0-link.jpg"),)
        assert [f.path for f in group.others] == [str(photos / "z-copy.jpg")]
    result = invoke_as_user(tiny_weights, library.root, "duplicates", "-m", MODEL, "--max-distance", "0", "--json")
    document = json.loads(result.stdout)
    assert document["summary"]["removable_files"] == 1
    assert document["groups"][0]["keeper"]["path"] == str(photos / "p0.jpg")


@pytest.mark.slow
def test_a_folder_indexed_through_a_bind_mount_too_has_no_duplicates(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    (tmp_path / "mirror").mkdir()
    library = LibraryLayout.prepare(tmp_path / "lib")
    ds, lib = SHELL_COMMAND, f"--library {library.root} --weights-dir {tiny_weights}"
    done = in_mount_namespace(f"""
        mount --bind {photos} {tmp_path}/mirror
        {ds} index {photos} {tmp_path}/mirror -m {MODEL} {lib} > /dev/null
        {ds} duplicates -m {MODEL} --max-distance 0 --json --library {library.root} > {tmp_path}/dups.json
    """)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "dups.json").read_text())
    assert document["groups"] == [], document
    assert document["summary"]["removable_files"] == 0 and document["summary"]["removable_bytes"] == 0


# no value from the file system crashes a run --------------------------------------------


def test_a_file_dated_after_2262_is_one_failed_line_and_the_run_goes_on(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "photos", 4, (96, 72), 1, "p{}.png")
    year_2300 = 10_413_792_000 * 10**9
    os.utime(photos / "p1.png", ns=(year_2300, year_2300))
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = index(library, photos, tiny_model, batch_size=2)
    assert (report.embedded, report.failed) == (3, 1)
    [(path, reason)] = report.failures
    assert path == str(photos / "p1.png") and "2262" in reason
    again = index(library, photos, tiny_model, batch_size=2)
    assert (again.read, again.failed, again.unchanged) == (0, 0, 4)


def test_an_unexpected_error_committing_a_batch_loses_only_the_file_that_caused_it(tmp_path, tiny_model, monkeypatch):
    photos = photo_folder(tmp_path / "photos", 5, (96, 72), 1, "p{}.png")
    real = Catalog.commit_batch

    def commit_batch(self, root_id, files, *args, **kwargs):
        if any(entry.relpath == "p2.png" and entry.content_hash for entry in files):
            raise ValueError("something no one expected")
        return real(self, root_id, files, *args, **kwargs)

    monkeypatch.setattr(Catalog, "commit_batch", commit_batch)
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = index(library, photos, tiny_model, batch_size=8)
    assert (report.embedded, report.failed) == (4, 1)
    assert report.failures == [(str(photos / "p2.png"), "could not be recorded: ValueError: something no one expected")]
    with Catalog(library.catalog_path) as catalog:
        assert catalog.root_counts() == [(str(photos), 4, 1)]


# failures whose cause can pass ---------------------------------------------------------


def refuse_reading(monkeypatch, name: str, reason: str) -> None:
    """``name`` cannot be read, for ``reason`` (as root, a chmod would not stop the test)."""
    from dreamsearch.indexer import pipeline
    from dreamsearch.reading import FileBytes

    real = pipeline.read_file
    monkeypatch.setattr(
        pipeline, "read_file", lambda path, *a: FileBytes(error=reason) if path.endswith(name) else real(path, *a)
    )


def test_a_file_that_could_not_be_read_is_retried_on_the_next_run(tmp_path, tiny_model, tiny_weights, monkeypatch):
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    with monkeypatch.context() as patched:
        refuse_reading(patched, "p1.jpg", "permission denied")
        assert index(library, photos, tiny_model).failed == 1
    result = invoke_as_user(tiny_weights, library.root, "status", "--failed")
    assert "permission denied" in result.stdout and "retried" in result.stdout, result.stdout
    report = index(library, photos, tiny_model)  # the permission was fixed; size and mtime did not change
    assert (report.read, report.embedded, report.failed) == (1, 1, 0)
    with Catalog(library.catalog_path) as catalog:
        assert catalog.failed_files() == []


def test_a_transient_failure_three_runs_in_a_row_stays_failed_until_the_file_changes(tmp_path, tiny_model, monkeypatch):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    refuse_reading(monkeypatch, "p1.jpg", "cannot read: Input/output error")
    assert [index(library, photos, tiny_model).read for _ in range(4)] == [2, 1, 1, 0]
    assert index(library, photos, tiny_model, retry_failed=True).read == 1
    os.utime(photos / "p1.jpg")
    assert index(library, photos, tiny_model).read == 1


def test_a_permanent_failure_is_not_retried_unless_asked(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    assert index(library, photos, tiny_model).failed == 1
    assert index(library, photos, tiny_model).read == 0
    result = invoke_as_user(tiny_weights, library.root, "status", "--failed")
    assert "broken.jpg" in result.stdout and "permanent" in result.stdout, result.stdout
    result = invoke_as_user(tiny_weights, library.root, "index", str(photos), "-m", MODEL, "--retry-failed", "--json")
    assert result.exit_code == 0 and '"read": 1' in result.stdout, result.stdout
