"""Never a silently wrong result, never lost work, never a hang: the situations an
adversarial pass found (issue 10), each reproduced as a user meets it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dreamsearch.api import Library
from dreamsearch.catalog import Catalog
from dreamsearch.errors import DreamsearchError
from dreamsearch.layout import LibraryLayout
from tests.helpers.backends import AS_USERS_RUN
from tests.helpers.cli import SHELL_COMMAND, invoke_as_user
from tests.helpers.images import photo_folder
from tests.helpers.indexing import index, stored_paths
from tests.helpers.mounts import in_mount_namespace

MODEL = "dreamsim-dino"


# nested roots --------------------------------------------------------------------------


def test_a_folder_inside_an_indexed_folder_joins_it(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "A", 3, (96, 72), 1, "a{}.jpg")
    photo_folder(photos / "inner", 3, (96, 72), 10, "i{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    report = index(library, photos / "inner", tiny_model)
    assert (report.embedded, report.new, report.removed) == (0, 0, 0)
    with Catalog(library.catalog_path) as catalog:
        assert list(catalog.roots().values()) == [str(photos)]
        assert catalog.root_counts() == [(str(photos), 6, 0)]
    with Library.open(library.root) as api:
        assert api.duplicates(MODEL, max_distance=0.0) == []  # nothing is a copy of itself
        for match in api.search(api.query(like=photos / "inner" / "i0.jpg", model=MODEL), k=10).matches:
            assert match.also_at == ()
        assert len({m.path for m in api.search(api.query(like=photos / "a1.jpg", model=MODEL), k=10).matches}) == 5

    (photos / "inner" / "i1.jpg").unlink()  # a run on the inner folder forgets only there
    report = index(library, photos / "inner", tiny_model)
    assert report.removed == 1 and len(stored_paths(library)) == 5


def test_a_parent_indexed_after_its_subfolder_absorbs_it_without_embedding_again(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "A", 2, (96, 72), 1, "a{}.jpg")
    photo_folder(photos / "inner", 3, (96, 72), 10, "i{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos / "inner", tiny_model)
    report = index(library, photos, tiny_model)
    assert (report.embedded, report.unchanged, report.removed) == (2, 3, 0)
    with Catalog(library.catalog_path) as catalog:
        assert list(catalog.roots().values()) == [str(photos)]
        assert catalog.last_seq(catalog.model(MODEL)) == 5  # one add per photo, nothing redone
    assert stored_paths(library) == sorted(
        [str(photos / f"a{i}.jpg") for i in (0, 1)] + [str(photos / "inner" / f"i{i}.jpg") for i in (0, 1, 2)]
    )


# folders that look unmounted -------------------------------------------------------------


def test_a_folder_that_lost_its_files_keeps_them_until_prune(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "mnt" / "photos", 6, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    aside = tmp_path / "aside"
    photos.rename(aside)
    photos.mkdir()  # an empty file system mounted over the folder

    result = invoke_as_user(tiny_weights, library.root, "index", str(photos), "-m", MODEL, "--json")
    assert result.exit_code == 0
    assert '"removed": 0' in result.stdout and '"kept": 6' in result.stdout
    assert f"{photos}: 6 of its 6 indexed files are gone" in result.stderr and "--prune" in result.stderr
    with Catalog(library.catalog_path) as catalog:
        assert catalog.count_vectors(catalog.model(MODEL)) == 6

    for name in ("p1.jpg", "p2.jpg"):  # back, but 4 of 6 still missing: more than half
        shutil.copy2(aside / name, photos / name)
    assert index(library, photos, tiny_model).kept == 4
    report = index(library, photos, tiny_model, prune=True)
    assert (report.removed, report.kept) == (4, 0)
    (photos / "p2.jpg").unlink()  # one of two: an ordinary deletion
    assert index(library, photos, tiny_model).removed == 1


def test_files_in_a_folder_that_cannot_be_listed_are_kept_and_reported(tmp_path, tiny_model, monkeypatch):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    photo_folder(photos / "locked", 3, (96, 72), 10, "l{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    real_scandir = os.scandir

    def scandir(path):  # root reads every folder, so the refusal is simulated
        if Path(path) == photos / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index(library, photos, tiny_model)
    assert report.removed == 0 and report.kept == 0
    assert len(stored_paths(library)) == 6  # 5 photos and the folder's failure
    with Catalog(library.catalog_path) as catalog:
        assert [(f.path, f.reason, f.kind) for f in catalog.failed_files()] == [
            (str(photos / "locked"), "cannot list or open: Permission denied", "transient")
        ]


def test_an_indexed_folder_that_cannot_be_listed_keeps_its_files_even_with_prune(tmp_path, tiny_model, monkeypatch):
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    real_scandir = os.scandir

    def scandir(path):  # the share answers "permission denied" today
        if Path(path) == photos:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index(library, photos, tiny_model, prune=True)
    assert report.removed == 0 and report.failures == [(str(photos), "Permission denied")]
    assert len(stored_paths(library)) == 3


def test_byte_copies_of_an_undecodable_file_are_recorded_on_the_first_run(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "photos", 1, (96, 72), 1, "p{}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 100)
    shutil.copy(photos / "broken.jpg", photos / "broken-copy.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    report = index(library, photos, tiny_model)
    assert report.failed == 2
    with Catalog(library.catalog_path) as catalog:
        assert [Path(f.path).name for f in catalog.failed_files()] == ["broken-copy.jpg", "broken.jpg"]


# results name only files on disk ------------------------------------------------------------


def test_results_and_duplicates_never_name_files_gone_from_disk(tmp_path, tiny_model):
    photos = photo_folder(tmp_path / "photos", 6, (96, 72), 1, "p{}.jpg")
    shutil.copy(photos / "p1.jpg", photos / "p1-copy.jpg")
    shutil.copy(photos / "p2.jpg", photos / "p2-copy.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    with Library.open(library.root) as api:
        assert len(api.duplicates(MODEL, max_distance=0.0)) == 2
        (photos / "p1-copy.jpg").unlink()  # gone since the run, not yet forgotten
        (photos / "p3.jpg").unlink()
        os.utime(photos / "p4.jpg", ns=(1, 1))  # replaced: no longer what was indexed
        results = api.search(api.query(like=photos / "p2.jpg", model=MODEL), k=10).matches
        named = [m.path for m in results] + [p for m in results for p in m.also_at]
        assert sorted(Path(p).name for p in named) == ["p0.jpg", "p1.jpg", "p5.jpg"]
        groups = api.duplicates(MODEL, max_distance=0.0)
        assert [[Path(f.path).name for f in g.files] for g in groups] == [["p2.jpg", "p2-copy.jpg"]]
        (
            photos / "p2-copy.jpg"
        ).unlink()  # p2.jpg is the last copy left: no group may suggest deleting it: no group may suggest deleting it
        assert api.duplicates(MODEL, max_distance=0.0) == []


def test_k_is_capped_at_the_library_size(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 4, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    result = invoke_as_user(
        tiny_weights,
        library.root,
        "query",
        "--like",
        str(photos / "p1.jpg"),
        "-m",
        MODEL,
        "-k",
        "1000000000000",
        "--jsonl",
    )
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3


def test_like_and_under_accept_paths_through_a_followed_symlink(tmp_path, tiny_model, tiny_weights):
    elsewhere = photo_folder(tmp_path / "elsewhere", 3, (96, 72), 1, "e{}.jpg")
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 10, "p{}.jpg")
    os.symlink(elsewhere, photos / "linked")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model, follow_symlinks=True)
    through_link = photos / "linked" / "e1.jpg"
    with Library.open(library.root) as api:
        assert str(through_link) in [
            m.path for m in api.search(api.query(like=photos / "p0.jpg", model=MODEL), k=10).matches
        ]
    result = invoke_as_user(
        tiny_weights,
        library.root,
        "query",
        "--like",
        str(through_link),
        "-m",
        MODEL,
        "--under",
        str(photos / "linked"),
        "-0",
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(result.stdout_bytes.split(b"\0")[:-1]) == [
        os.fsencode(photos / "linked" / f"e{i}.jpg") for i in (0, 2)
    ]


# one writer at a time -------------------------------------------------------------------------


def test_forget_and_remove_refuse_while_an_index_run_holds_the_library(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    with library.writer_lock():  # what `dreamsearch index` holds for its whole run
        result = invoke_as_user(tiny_weights, library.root, "forget", str(photos))
        assert result.exit_code == 1
        assert result.stderr.startswith("error: another dreamsearch is changing") and result.stderr.count("\n") == 1
        with Library.open(library.root) as api, pytest.raises(DreamsearchError, match="another dreamsearch"):
            api.remove([photos / "p1.jpg"])
    assert len(stored_paths(library)) == 2
    assert invoke_as_user(tiny_weights, library.root, "forget", str(photos)).exit_code == 0


# the Python API from a plain script ---------------------------------------------------------


@pytest.mark.slow
def test_the_readme_api_example_runs_as_a_script_without_a_main_guard(tmp_path, tiny_weights):
    photo_folder(tmp_path / "photos", 5, (96, 72), 1, "p{}.jpg")
    photo_folder(tmp_path, 1, (96, 72), 99, "ramen.jpg")
    script = tmp_path / "example.py"
    script.write_text(
        textwrap.dedent(f"""\
        from dreamsearch import Library

        with Library.open() as library:
            library.index(["./photos"], models=["{MODEL}"])
            page = library.search(library.query("ramen.jpg", model="{MODEL}"), k=25)
            for match in page.matches:
                print(match.rank, round(match.distance, 4), match.path)
        """)
    )
    env = {
        **os.environ,
        "DREAMSEARCH_LIBRARY": str(tmp_path / "lib"),
        "DREAMSEARCH_WEIGHTS": str(tiny_weights),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        **AS_USERS_RUN,
    }
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and lines[0].startswith("1 ")


# the library folder itself ----------------------------------------------------------------


def test_a_new_library_folder_is_private_to_its_user(tmp_path):
    library = LibraryLayout.prepare(tmp_path / "lib")
    assert stat.S_IMODE(library.root.stat().st_mode) == 0o700


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_catalog_is_one_line_for_every_command(tmp_path, tiny_model, tiny_weights, damage):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    raw = library.catalog_path.read_bytes()
    damaged = {"truncated": raw[:3000], "garbage": b"this is not sqlite" * 100, "empty": b""}[damage]
    library.catalog_path.write_bytes(damaged)
    for command in (
        ["status"],
        ["query", "--like", str(photos / "p1.jpg"), "-m", MODEL],
        ["index", str(photos), "-m", MODEL],
        ["duplicates", "-m", MODEL],
    ):
        result = invoke_as_user(tiny_weights, library.root, *command)
        assert result.exit_code == 1, (command, result.stdout)
        assert result.stderr.count("\n") == 1 and str(library.catalog_path) in result.stderr, (command, result.stderr)
        assert ("empty file" if damage == "empty" else "damaged") in result.stderr
    assert library.catalog_path.read_bytes() == damaged  # nothing "repaired" it into an empty library


def test_an_unwritable_library_location_is_one_line(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 1, (96, 72), 1, "p{}.jpg")
    (tmp_path / "file").write_text("a file, not a folder")
    result = invoke_as_user(tiny_weights, tmp_path / "file" / "lib", "index", str(photos), "-m", MODEL)
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_a_folder_name_that_is_not_utf8_is_indexed(tmp_path, tiny_model, tiny_weights):
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff"))
    photo_folder(folder, 2, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    result = invoke_as_user(tiny_weights, library.root, "index", str(folder), "-m", MODEL)
    assert result.exit_code == 0, result.stderr
    assert invoke_as_user(tiny_weights, library.root, "status").stdout.count("2 images") == 1
    result = invoke_as_user(tiny_weights, library.root, "query", "--like", str(folder / "p1.jpg"), "-m", MODEL, "-0")
    assert result.stdout_bytes == os.fsencode(folder / "p0.jpg") + b"\0"


# read-only and full file systems (real mounts in a private mount namespace) -----------------


def test_a_read_only_library_answers_queries_and_status_and_refuses_index(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 3, (96, 72), 1, "p{}.jpg")
    library = LibraryLayout.prepare(tmp_path / "lib")
    index(library, photos, tiny_model)
    ds = SHELL_COMMAND
    lib = f"--library {library.root}"
    done = in_mount_namespace(f"""
        mount --bind {library.root} {library.root}
        mount -o remount,bind,ro {library.root}
        {ds} status {lib} > {tmp_path}/status.out
        {ds} query --like {photos}/p1.jpg -m {MODEL} --jsonl {lib} > {tmp_path}/query.out
        if {ds} index {photos} -m {MODEL} --weights-dir {tiny_weights} {lib} 2> {tmp_path}/index.err; then exit 9; fi
        touch {library.root}/x 2>/dev/null && exit 8 || true
    """)
    assert done.returncode == 0, done.stderr
    assert "3 images" in (tmp_path / "status.out").read_text()
    assert len((tmp_path / "query.out").read_text().splitlines()) == 2
    error = (tmp_path / "index.err").read_text()
    assert error.count("\n") == 1 and "read-only" in error


@pytest.mark.slow
def test_a_full_disk_during_index_is_one_line_and_the_library_recovers(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 40, (256, 192), 1, "p{}.png")
    lib = tmp_path / "lib"
    lib.mkdir()
    ds = SHELL_COMMAND
    options = f"-m {MODEL} --weights-dir {tiny_weights} --library {lib} --batch-size 4"
    done = in_mount_namespace(f"""
        mount -t tmpfs -o size=300k tmpfs {lib}
        if {ds} index {photos} {options} 2> {tmp_path}/full.err; then exit 9; fi
        ls -a {lib} {lib}/index > {tmp_path}/after-full.ls
        mount -o remount,size=50m {lib}
        {ds} index {photos} {options} --json > {tmp_path}/second.json
        {ds} status --library {lib} > {tmp_path}/status.out
    """)
    assert done.returncode == 0, done.stdout + done.stderr
    error = (tmp_path / "full.err").read_text()
    assert error.startswith("error: ") and error.count("\n") == 1 and ("full" in error or "No space" in error), error
    assert ".partial" not in (tmp_path / "after-full.ls").read_text()
    assert "40 images" in (tmp_path / "status.out").read_text()
    assert "checksum ok" in (tmp_path / "status.out").read_text()


def test_a_newline_in_a_file_name_cannot_forge_a_record(tmp_path, tiny_model, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 1, (96, 72), 1, "p{}.jpg")
    (photos / "x.jpg\nskipped passwd: forged.jpg").write_bytes(b"not a picture")
    library = LibraryLayout.prepare(tmp_path / "lib")
    result = invoke_as_user(tiny_weights, library.root, "index", str(photos), "-m", MODEL)
    assert result.exit_code == 0
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert skipped == [f"skipped $'{photos}/x.jpg\\nskipped passwd: forged.jpg': not an image Pillow can read"]
    failed = [
        line
        for line in invoke_as_user(tiny_weights, library.root, "status", "--failed").stdout.splitlines()
        if line.startswith("failed")
    ]
    assert failed == [
        f"failed $'{photos}/x.jpg\\nskipped passwd: forged.jpg': not an image Pillow can read "
        "[permanent: retried when the file changes, or with index --retry-failed]"
    ]
