"""Building an index from the catalog holds the index plus a bounded buffer, never the
collection: the training sample is read once (not copied) and freed before the chunked adds.
Python-side memory (numpy buffers, rows) is measured with tracemalloc; FAISS's own memory is
the index. ``benchmarks/ann.py --catalog-build`` measures the whole process at 2M vectors."""

from __future__ import annotations

import functools
import tracemalloc

import faiss  # noqa: F401 - imported before measuring: its modules are not the build's memory
import pytest

from dreamsearch.catalog import Catalog, FileEntry
from dreamsearch.vector_index import IndexPlan, VectorIndex, rebuild
from dreamsearch.vector_index.recall import clustered_unit_vectors

DIM = 256
N = 30_000
CHUNK = 500
PLAN = IndexPlan("ivf", "IVF128,Flat", nlist=128, nprobe=16)  # trains on 128 x 50 = 6,400 vectors


@pytest.mark.slow
def test_rebuild_memory_is_the_sample_or_one_chunk_not_the_collection(tmp_path, monkeypatch):
    vectors = clustered_unit_vectors(N, DIM, centres=64, seed=3)
    data_bytes = vectors.nbytes
    sample_bytes = PLAN.nlist * 50 * DIM * 4
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        model = catalog.ensure_model("m", DIM, "fp")
        root = catalog.attach(tmp_path / "photos").id
        for start in range(0, N, 10_000):
            files = [FileEntry(f"{i}.jpg", 1, 0, f"h{i}") for i in range(start, start + 10_000)]
            catalog.commit_batch(
                root, files, {"m": dict(zip((f.content_hash for f in files), vectors[start:], strict=False))}
            )
        del vectors

        monkeypatch.setattr(Catalog, "iter_vectors", functools.partialmethod(Catalog.iter_vectors, chunk=CHUNK))
        during_adds: list[int] = []
        sample_peak: list[int] = []
        add, vectors_for = VectorIndex.add, Catalog.vectors_for

        def traced_add(self, ids, chunk):
            during_adds.append(tracemalloc.get_traced_memory()[0] - baseline)
            return add(self, ids, chunk)

        def traced_vectors_for(self, model, ids):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            found = vectors_for(self, model, ids)
            sample_peak.append(tracemalloc.get_traced_memory()[1] - before)
            return found

        monkeypatch.setattr(VectorIndex, "add", traced_add)
        monkeypatch.setattr(Catalog, "vectors_for", traced_vectors_for)
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            index = rebuild(catalog, model, plan=PLAN)
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()

    assert len(index) == N
    assert sample_peak[0] < 1.6 * sample_bytes  # read in place, not gathered then concatenated
    assert max(during_adds) < 0.5 * sample_bytes  # the sample and the id list are gone by then
    assert peak < 0.4 * data_bytes, (peak, data_bytes)
