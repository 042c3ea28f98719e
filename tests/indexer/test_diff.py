"""The diff of a folder against the catalog, with no model at all: which files are read,
which count as unchanged, which are gone, and when gone files are kept."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dreamsearch.catalog import Catalog, RootPlace
from dreamsearch.indexer import IndexOptions, IndexReport
from dreamsearch.indexer.diff import CatalogDiff, FolderPlan
from dreamsearch.indexer.writer import entry
from dreamsearch.scan import scan
from tests.helpers.images import photo_folder, photo_like


@pytest.fixture
def catalog(tmp_path: Path):
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        yield catalog


def indexed(catalog: Catalog, folder: Path) -> RootPlace:
    """``folder`` recorded as indexed, as it is on disk now, each file its own content
    (named after it) and no vectors."""
    place = catalog.attach(folder)
    catalog.commit_batch(place.id, [entry(found, "content of " + found.relpath) for found in scan(folder)])
    return place


def diff_of(catalog: Catalog, place: RootPlace, **options) -> tuple[CatalogDiff, FolderPlan, list[str], IndexReport]:
    report = IndexReport()
    diff = CatalogDiff(catalog, IndexOptions(**options), report, threading.Event())
    plan = diff.plan(place, place.path)
    read = sorted(candidate.found.relpath for candidate in diff.candidates(plan))
    return diff, plan, read, report


def test_only_new_and_changed_files_are_read_and_the_rest_unchanged_or_gone(catalog, tmp_path):
    folder = photo_folder(tmp_path / "photos", 5, (64, 48), 1, "p{}.png")
    place = indexed(catalog, folder)
    photo_like(80, 60, 9).save(folder / "p1.png")  # changed: other bytes, other size
    photo_like(64, 48, 8).save(folder / "new.png")
    (folder / "p2.png").unlink()

    diff, plan, read, report = diff_of(catalog, place)

    assert read == ["new.png", "p1.png"]
    assert (report.found, report.to_read, plan.unchanged) == (5, 2, 3)
    assert plan.gone == ["p2.png"] and plan.complete
    diff.remove_gone(plan)
    assert report.removed == 1 and "p2.png" not in catalog.files_under(place.id)


def test_a_folder_that_lost_most_of_its_files_keeps_them_unless_they_moved_or_prune_is_given(catalog, tmp_path):
    folder = photo_folder(tmp_path / "photos", 4, (64, 48), 1, "p{}.png")
    place = indexed(catalog, folder)
    for name in ("p0.png", "p1.png", "p2.png"):  # 3 of 4: an unmounted drive looks like this
        (folder / name).unlink()

    diff, plan, _read, report = diff_of(catalog, place)
    diff.remove_gone(plan)
    assert (report.kept, report.removed) == (3, 0)
    assert report.kept_folders == [(str(folder), 3, 4)]
    assert len(catalog.files_under(place.id)) == 4

    moved = frozenset(f"content of p{i}.png" for i in range(3))  # the run found them at other paths
    diff, plan, _read, report = diff_of(catalog, place)
    diff.remove_gone(plan, found_again=moved)
    assert (report.kept, report.removed) == (0, 3)

    place = indexed(catalog, photo_folder(tmp_path / "other", 4, (64, 48), 2, "q{}.png"))
    for name in ("q0.png", "q1.png", "q2.png"):
        (place.path / name).unlink()
    diff, plan, _read, report = diff_of(catalog, place, prune=True)
    diff.remove_gone(plan)
    assert (report.kept, report.removed) == (0, 3) and len(catalog.files_under(place.id)) == 1
