"""Index runs for tests: one in this process, one in a child to kill mid-run, and a
library's observable content to compare two runs by."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from dreamsearch.catalog import Catalog
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.vector_index import open_index

#: ``python -c INDEX_SCRIPT WEIGHTS LIBRARY FOLDER``: index FOLDER with the tiny DreamSim-DINO
#: in batches of 2, so a kill lands between commits.
INDEX_SCRIPT = """
import sys
from pathlib import Path
from dreamsearch.indexer import IndexOptions, index_folders
from dreamsearch.layout import LibraryLayout
from dreamsearch.models import load_model

model = load_model("dreamsim-dino", weights_dir=sys.argv[1], device="cpu")
index_folders(LibraryLayout.prepare(Path(sys.argv[2])), [Path(sys.argv[3])], [model],
              IndexOptions(batch_size=2, workers=1))
"""


def index(library: LibraryLayout, folder: Path, model, **options):
    """``folder`` indexed with ``model`` by one reading worker."""
    return index_folders(library, [folder], [model], IndexOptions(workers=1, **options))


def stored_paths(library: LibraryLayout) -> list[str]:
    """Every file path the catalog holds, sorted."""
    with Catalog(library.catalog_path) as catalog:
        return sorted(
            str(Path(root) / rel) for root_id, root in catalog.roots().items() for rel in catalog.files_under(root_id)
        )


def library_state(library: LibraryLayout) -> dict:
    """path -> stored vector (or failure reason): the library's observable content."""
    with Catalog(library.catalog_path) as catalog:
        model = catalog.model("dreamsim-dino")
        ids, vectors = catalog.vectors_for(model, catalog.vector_ids(model))
        by_id = dict(zip(ids.tolist(), vectors, strict=True))
        state = {failed.path: failed.reason for failed in catalog.failed_files()}
        for content_id, paths in catalog.paths_of(list(by_id)).items():
            for path in paths:
                state[path] = by_id[content_id]
        index = open_index(catalog, model, library.index_dir)
        assert index.ids().tolist() == sorted(by_id)
    return state


def kill_at_vectors(
    command: list[str], library: LibraryLayout, vectors: int, env: Mapping[str, str] | None = None
) -> int:
    """Run ``command`` (in ``env``, if given) and SIGKILL it once ``library`` holds
    ``vectors`` vectors (or it ended, or 2 minutes passed); returns how many it held when
    killed."""
    child = subprocess.Popen(command, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None and vectors_in(library) < vectors:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return vectors_in(library)


def vectors_in(library: LibraryLayout) -> int:
    """The catalog's vector count, read without waiting on a writer (0 before it exists)."""
    try:
        with sqlite3.connect(f"file:{library.catalog_path}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT count(*) FROM vectors").fetchone()[0]
    except sqlite3.Error:
        return 0
