"""Weights manager: clear offline errors, imports, and downloads that never leave a
broken file in place (served by a local HTTP server on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from dreamsearch.errors import WeightsError
from dreamsearch.models.registry import get_spec
from dreamsearch.models.weights import ensure_weights, fetch, import_weights, missing_files

DINO_FILES = [
    "dino_vitb16_single_lora/adapter_config.json",
    "dino_vitb16_single_lora/adapter_model.safetensors",
    "checkpoints/dino_vitbase16_pretrain.pth",
]


def test_missing_weights_offline_name_files_urls_and_import_command(tmp_path):
    spec = get_spec("dreamsim-dino")
    with pytest.raises(WeightsError) as info:
        ensure_weights(spec, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for relpath in DINO_FILES:
        assert relpath in message
    assert "dreamsim_dino_vitb16_checkpoint.zip" in message
    assert "dino_vitbase16_pretrain.pth" in message
    assert "dreamsearch models import dreamsim-dino" in message


def _zip_of(root: Path, relpaths: list[str], prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for relpath in relpaths:
            zf.write(root / relpath, prefix + relpath)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dino_cache(official_cache) -> Path:
    return official_cache("dino_vitb16")


def test_import_folder_such_as_an_official_cache_dir(tmp_path, dino_cache):
    spec = get_spec("dreamsim-dino")
    written = import_weights(spec, tmp_path / "w", dino_cache)
    assert sorted(p.relative_to(tmp_path / "w").as_posix() for p in written) == sorted(DINO_FILES)
    for relpath in DINO_FILES:
        assert (tmp_path / "w" / relpath).read_bytes() == (dino_cache / relpath).read_bytes()
    assert missing_files(spec, tmp_path / "w") == []


def test_import_zip_with_a_top_folder_and_a_loose_backbone(tmp_path, dino_cache):
    spec = get_spec("dreamsim-dino")
    archive = tmp_path / "release.zip"
    archive.write_bytes(_zip_of(dino_cache, DINO_FILES[:2], prefix="models/"))
    import_weights(spec, tmp_path / "w", archive)
    assert [f.path for f in missing_files(spec, tmp_path / "w")] == [DINO_FILES[2]]
    import_weights(spec, tmp_path / "w", dino_cache / DINO_FILES[2])
    assert missing_files(spec, tmp_path / "w") == []


def test_import_refuses_a_damaged_checkpoint(tmp_path, dino_cache):
    spec = get_spec("dreamsim-dino")
    broken = tmp_path / "src" / "checkpoints" / "dino_vitbase16_pretrain.pth"
    broken.parent.mkdir(parents=True)
    data = (dino_cache / DINO_FILES[2]).read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="not a complete, readable checkpoint"):
        import_weights(spec, tmp_path / "w", tmp_path / "src")
    assert not (tmp_path / "w" / DINO_FILES[2]).exists()
    assert not any((tmp_path / "w").rglob("*.pth*"))
    assert _leftovers(tmp_path / "w") == []


class _Server:
    """Serves ``routes[path] = (body, announced_length)`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, int]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, length = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def _spec_served_from(url: str):
    spec = get_spec("dreamsim-dino")
    files = tuple(dataclasses.replace(f, url=f"{url}/{Path(f.url).name}") for f in spec.files)
    return dataclasses.replace(spec, files=files)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith("."))


def test_download_installs_verified_files(tmp_path, server, dino_cache):
    spec = _spec_served_from(server.url)
    archive = _zip_of(dino_cache, DINO_FILES[:2])
    backbone = (dino_cache / DINO_FILES[2]).read_bytes()
    server.routes["/dreamsim_dino_vitb16_checkpoint.zip"] = (archive, len(archive))
    server.routes["/dino_vitbase16_pretrain.pth"] = (backbone, len(backbone))
    written = fetch(spec, tmp_path, progress=False)
    assert len(written) == 3 and missing_files(spec, tmp_path) == []
    assert (tmp_path / DINO_FILES[2]).read_bytes() == backbone
    assert _leftovers(tmp_path) == []


def test_truncated_zip_is_never_left_in_place(tmp_path, server, dino_cache):
    spec = _spec_served_from(server.url)
    archive = _zip_of(dino_cache, DINO_FILES[:2])
    cut = archive[: len(archive) - 200]
    server.routes["/dreamsim_dino_vitb16_checkpoint.zip"] = (cut, len(cut))  # honest length
    with pytest.raises(WeightsError, match="zip"):
        fetch(spec, tmp_path, progress=False)
    assert missing_files(spec, tmp_path) == list(spec.files)
    assert _leftovers(tmp_path) == []


def test_connection_dropped_mid_download_is_reported(tmp_path, server, dino_cache):
    spec = _spec_served_from(server.url)
    archive = _zip_of(dino_cache, DINO_FILES[:2])
    half = archive[: len(archive) // 2]
    server.routes["/dreamsim_dino_vitb16_checkpoint.zip"] = (half, len(archive))  # lies
    with pytest.raises(WeightsError, match="incomplete|broke off"):
        fetch(spec, tmp_path, progress=False)
    assert not (tmp_path / DINO_FILES[0]).exists()
    assert _leftovers(tmp_path) == []


def test_unreachable_server_gives_the_offline_instructions(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("DREAMSEARCH_OFFLINE")
    spec = _spec_served_from("http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(WeightsError, match="cannot download .*dreamsearch models import"):
        ensure_weights(spec, tmp_path)
