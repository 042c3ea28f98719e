"""A CLI query against a running server (issue 23, item 2): ``query`` and ``compare`` hand
their embedding to a ``dreamsearch serve`` of the same library through its private socket
and print exactly what they print without it. Only 127.0.0.1 and the socket are used."""

from __future__ import annotations

import os
import signal
import stat
import subprocess

import httpx
import pytest

from dreamsearch.api import Library
from dreamsearch.indexer import IndexOptions
from tests.helpers.backends import with_saved_graphs
from tests.helpers.cli import Probed, probe
from tests.helpers.images import make_photos
from tests.helpers.official_layout import write_tiny_cache
from tests.server.serving import SERVER_ENV, running_server, serve_command

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("as_users_run")]

DINO, CLIP = "dreamsim-dino", "dreamsim-clip"


@pytest.fixture(scope="module")
def library(tmp_path_factory, as_users_run):
    """A library of both models, whose graphs are saved: the CLI and the server load them
    as a user's would, on the default backend."""
    root = tmp_path_factory.mktemp("warm")
    weights = write_tiny_cache(root / "weights", "dino_vitb16")
    with_saved_graphs(write_tiny_cache(weights, "clip_vitb32", seed=1), DINO, CLIP)
    photos = make_photos(root / "photos")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 10)
    with Library.open(root / "lib", weights_dir=weights, device="cpu") as opened:
        opened.index([photos], models=[DINO, CLIP], options=IndexOptions(workers=1))
    return root / "lib", photos, weights


def cli(library, *args: str) -> Probed:
    """``dreamsearch ARGS`` on the library in a fresh interpreter (see ``built_a_model``)."""
    lib, _photos, weights = library
    return probe(*args, "--library", str(lib), "--weights-dir", str(weights))


def built_a_model(run: Probed) -> bool:
    """Whether the process built a model itself: only that imports torch or OpenVINO."""
    return bool(run.imported & {"torch", "openvino"})


def printed(run: Probed) -> tuple[int, str, str]:
    """What the user saw: exit code, stdout and stderr."""
    return run.code, run.stdout, run.stderr


@pytest.mark.slow
def test_a_query_through_a_running_server_prints_the_same_without_loading_a_model(library):
    lib, photos, weights = library
    query = ("query", str(photos / "p1.jpg"), str(photos / "p3.jpg"), "-k", "4", "-m", DINO)
    alone = cli(library, *query)
    assert alone.code == 0 and built_a_model(alone), alone.stderr
    with running_server(lib, weights, "--models", DINO):
        socket_path = lib / "serve.sock"
        assert stat.S_ISSOCK(socket_path.stat().st_mode) and stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        warm = cli(library, *query)
        forced = cli(library, *query, "--no-server")
    assert printed(warm) == printed(alone)
    assert not built_a_model(warm), warm.stderr  # the server embedded
    assert printed(forced) == printed(alone) and built_a_model(forced)
    assert not socket_path.exists()  # the server took its socket away when it stopped


@pytest.mark.slow
@pytest.mark.parametrize("name", ["broken.jpg", 'a "quoted" \\ name\twith tab.jpg'])
def test_a_bad_picture_is_told_the_same_through_the_server(library, tmp_path, name):
    lib, photos, weights = library
    picture = tmp_path / name
    picture.write_bytes((photos / "broken.jpg").read_bytes())
    query = ("query", str(picture), "-m", DINO)
    alone = cli(library, *query)
    with running_server(lib, weights, "--models", DINO):
        warm = cli(library, *query)
    assert alone.code == warm.code == 1
    assert printed(warm)[2] == printed(alone)[2] and "cannot" in alone.stderr


def test_the_private_socket_needs_no_token_and_the_port_still_does(library):
    lib, photos, weights = library
    with running_server(lib, weights, "--models", DINO, env={"DREAMSEARCH_TOKEN": "s3cret"}) as url:
        assert httpx.get(f"{url}/api/health").status_code == 401
        warm = cli(library, "query", str(photos / "p2.jpg"), "-k", "2", "-m", DINO)
    assert warm.code == 0 and not built_a_model(warm), warm.stderr
    assert "p2.jpg" in warm.stdout


@pytest.mark.slow
def test_a_model_the_server_does_not_serve_is_embedded_by_the_cli_itself(library):
    lib, photos, weights = library
    query = ("compare", str(photos / "p4.jpg"), "--models", f"{DINO},{CLIP}", "-k", "3")
    alone = cli(library, *query)
    with running_server(lib, weights, "--models", DINO):
        warm = cli(library, *query)
    assert alone.code == 0 and printed(warm) == printed(alone)


@pytest.mark.slow
def test_a_socket_left_by_a_killed_server_is_replaced_and_never_trusted(library):
    lib, photos, weights = library
    query = ("query", str(photos / "p1.jpg"), "-k", "3", "-m", DINO)
    alone = cli(library, *query)
    server = subprocess.Popen(
        serve_command(lib, weights, model=DINO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **SERVER_ENV},
    )
    try:
        assert "serving" in server.stdout.readline()
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert (lib / "serve.sock").is_socket()  # left behind: nobody listens
    assert printed(cli(library, *query)) == printed(alone)  # done here instead
    with running_server(lib, weights, "--models", DINO):  # a new server takes its place
        warm = cli(library, *query)
    assert printed(warm) == printed(alone) and not built_a_model(warm)


@pytest.mark.slow
def test_a_file_changed_after_it_was_sent_ahead_is_embedded_from_its_new_bytes(library, tmp_path):
    """``query`` sends its files to the server before importing the catalog layer
    (``warm.ask_ahead``); if a file changes before the query reads it, the server's vector
    of the old bytes is never used."""
    import shutil

    import numpy as np

    from dreamsearch.warm import ask_ahead

    lib, photos, weights = library
    picture = tmp_path / "query.jpg"
    shutil.copy(photos / "p1.jpg", picture)
    with Library.open(lib, weights_dir=weights, device="cpu") as alone:
        before = alone.query(picture, model=DINO).vector
        shutil.copy(photos / "p3.jpg", picture)
        after = alone.query(picture, model=DINO).vector
    assert not np.allclose(before, after)
    shutil.copy(photos / "p1.jpg", picture)
    with running_server(lib, weights, "--models", DINO):
        ask_ahead(lib, [picture], DINO)
        shutil.copy(photos / "p3.jpg", picture)  # replaced while the server embeds the old one
        with Library.open(lib, weights_dir=weights, device="cpu", use_server=True) as warm:
            query = warm.query(picture, model=DINO)
    np.testing.assert_allclose(query.vector, after, atol=1e-6)
