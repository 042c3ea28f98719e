"""FAISS indexes: kinds agree on exact duplicates, add/remove by id, rebuild and catch-up
from the catalog, retraining triggers, and readers that stay consistent during writes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamsearch.catalog import Catalog, FileEntry
from dreamsearch.vector_index import IndexMeta, VectorIndex, open_index, rebuild, with_kind
from dreamsearch.vector_index.recall import clustered_unit_vectors, recall_at_k
from dreamsearch.vector_index.sync import needs_retraining, outgrown_or_drifted

DIM = 32


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered_unit_vectors(12_000, DIM, centres=40, seed=1)


def build(kind: str, vectors: np.ndarray, ids: np.ndarray | None = None) -> VectorIndex:
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 7 if ids is None else ids
    plan = with_kind(kind, len(vectors), DIM)
    return VectorIndex.build(ids, vectors, plan, IndexMeta("m", "fp", DIM, plan))


@pytest.mark.parametrize("kind", ["flat", "ivf", pytest.param("ivfpq", marks=pytest.mark.slow)])
def test_every_kind_finds_exact_duplicates_first(data, kind):
    ids = np.arange(len(data), dtype=np.int64) * 3 + 7
    index = build(kind, data, ids)
    queries = data[::997]

    def fetch(wanted):
        return wanted, data[(wanted - 7) // 3]

    scores, found = index.search(queries, 5, fetch=fetch)
    assert found[:, 0].tolist() == ids[::997].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_ivf_recall_against_exact(data):
    exact = build("flat", data)
    approximate = build("ivf", data)
    queries = clustered_unit_vectors(200, DIM, centres=40, seed=1)[:200] + 0.01
    truth = exact.search(queries, 25)[1]
    assert recall_at_k(approximate.search(queries, 25)[1], truth, 25) >= 0.95


def test_add_remove_and_padding(data):
    index = build("ivf", data[:2000], np.arange(2000))
    assert index.remove(np.array([0, 1, 5000])) == 2
    assert 0 not in index.search(data[:1], 10)[1] and len(index) == 1998
    index.add(np.array([0]), data[:1])
    assert index.search(data[:1], 1)[1][0, 0] == 0
    small = build("flat", data[:3], np.array([1, 2, 3]))
    scores, ids = small.search(data[:1], 5)
    assert ids[0].tolist()[3:] == [-1, -1] and np.isneginf(scores[0, 3:]).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["flat", "ivf"]),
    st.lists(st.tuples(st.booleans(), st.sets(st.integers(0, 299), max_size=40)), max_size=12),
)
def test_index_holds_exactly_the_live_ids(data, kind, operations):
    pool = data[:300]
    index = build(kind, pool[:100], np.arange(100))
    live = set(range(100))
    for is_add, ids in operations:
        ids = sorted(ids)
        if is_add:
            new = [i for i in ids if i not in live]
            index.add(np.array(new, dtype=np.int64), pool[new])
            live |= set(new)
        else:
            index.remove(np.array(ids, dtype=np.int64))
            live -= set(ids)
    assert index.ids().tolist() == sorted(live)
    if live:  # and search sees all of them (every list probed)
        found = index.search(pool[:1], len(live), nprobe=max(1, index.plan.nlist))[1][0]
        assert set(found.tolist()) == live


# with the catalog -------------------------------------------------------------------


def entries(start: int, count: int, data: np.ndarray):
    files = [FileEntry(f"{i}.jpg", 1, 1, f"h{i}") for i in range(start, start + count)]
    return files, {"m": {f"h{i}": data[i] for i in range(start, start + count)}}


@pytest.fixture
def library(tmp_path, data):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    model = catalog.ensure_model("m", DIM, "fp")
    root = catalog.attach(tmp_path).id
    catalog.commit_batch(root, *entries(0, 500, data))
    yield catalog, model, root, tmp_path / "index"
    catalog.close()


def test_missing_or_corrupt_index_files_are_rebuilt(library):
    catalog, model, _root, folder = library
    index = open_index(catalog, model, folder, writable=True)
    expected = sorted(catalog.vector_ids(model).tolist())
    assert index.ids().tolist() == expected

    faiss_file = folder / index.meta.file
    faiss_file.write_bytes(b"garbage" * 10)
    assert open_index(catalog, model, folder, writable=True).ids().tolist() == expected

    (folder / "m.json").write_text("{not json")
    assert open_index(catalog, model, folder, writable=True).ids().tolist() == expected

    current = open_index(catalog, model, folder, writable=True)
    (folder / current.meta.file).unlink()
    assert open_index(catalog, model, folder).ids().tolist() == expected
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_stale_index_catches_up_with_adds_and_removes(library, data):
    catalog, model, root, folder = library
    saved = open_index(catalog, model, folder, writable=True)
    catalog.commit_batch(root, *entries(500, 50, data))
    catalog.remove_files(root, [f"{i}.jpg" for i in range(0, 500, 7)])

    reader = open_index(catalog, model, folder)  # a reader catches up in memory only
    assert reader.ids().tolist() == sorted(catalog.vector_ids(model).tolist())
    assert VectorIndex.load(folder, "m").meta.seq == saved.meta.seq

    writer = open_index(catalog, model, folder, writable=True)
    assert writer.meta.seq == catalog.last_seq(model)
    assert VectorIndex.load(folder, "m").ids().tolist() == sorted(catalog.vector_ids(model).tolist())


def test_growth_and_drift_trigger_retraining(data):
    index = build("ivf", data[:2000])
    assert needs_retraining(index, data[:0])  # 2,000 vectors: the policy wants exact search
    assert not outgrown_or_drifted(index, data[2000:3100])
    far = clustered_unit_vectors(1500, DIM, centres=3, seed=99)  # another "photo domain"
    assert index.residual(far) > 1.5 * index.meta.train_residual
    assert outgrown_or_drifted(index, far)
    index.add(np.arange(10**6, 10**6 + 6000), data[2000:8000])
    assert outgrown_or_drifted(index, data[:0])  # grew 4x


def test_rebuild_uses_the_policy_and_a_forced_plan(library):
    catalog, model, _root, _folder = library
    assert rebuild(catalog, model).plan.kind == "flat"
    forced = rebuild(catalog, model, plan=with_kind("ivf", 500, DIM))
    assert forced.plan.kind == "ivf" and forced.ids().tolist() == sorted(catalog.vector_ids(model).tolist())


def test_readers_during_writes_only_see_live_ids(library, data):
    catalog, model, root, folder = library
    open_index(catalog, model, folder, writable=True)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer():
        try:
            with Catalog(catalog.path) as own:
                for step in range(8):
                    own.commit_batch(root, *entries(500 + 50 * step, 50, data))
                    own.remove_files(root, [f"{i}.jpg" for i in range(step * 40, step * 40 + 40)])
                    open_index(own, model, folder, writable=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def reader():
        try:
            with Catalog(catalog.path) as own:
                while not done.is_set():
                    index = open_index(own, model, folder)
                    live = live_at(own, index.meta.seq)
                    found = index.search(data[:40], 10)[1]
                    assert set(found[found >= 0].tolist()) <= live
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []


def live_at(catalog: Catalog, seq: int) -> set[int]:
    """The ids the vector log says were live right after ``seq``."""
    state: dict[int, str] = {}
    for entry in catalog.changes_since(catalog.model("m"), 0):
        if entry.seq <= seq:
            state[entry.content_id] = entry.op
    return {i for i, op in state.items() if op == "add"}
