"""Corpus acquisition against a local HTTP server (loopback only): auth, resume, checksums, archives."""
from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from echo.corpus.acquire import AcquireConfig, DownloadItem, acquire, check_layout, download, extract
from echo.corpus.adapters import RealCorpusConfig, build_real_corpus
from echo.errors import ConfigError, EchoError

from tests.corpus import helpers as fx


USER, PASSWORD = "alice", "s3cret"


class FileServer:
    """Serves ``files`` over HTTP/1.0 with basic auth and ``Range: bytes=N-``; can cut a transfer
    half-way (``drop_once``) or answer 503 (``fail_once``) once per path; logs every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.log: list[dict] = []
        self.drop_once: set[str] = set()
        self.fail_once: set[str] = set()
        self.lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                entry = {"path": name, "range": self.headers.get("Range"), "status": None, "sent": 0,
                         "done": threading.Event()}
                with state.lock:
                    state.log.append(entry)
                try:
                    self._serve(name, entry)
                finally:
                    entry["done"].set()

            def _serve(self, name, entry):
                token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {token}":
                    entry["status"] = 401
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="corpus"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name not in state.files:
                    entry["status"] = 404
                    self.send_error(404)
                    return
                with state.lock:
                    fail = name in state.fail_once
                    state.fail_once.discard(name)
                    drop = name in state.drop_once
                    state.drop_once.discard(name)
                if fail:
                    entry["status"] = 503
                    self.send_error(503)
                    return
                data = state.files[name]
                start = 0
                if entry["range"]:
                    start = int(entry["range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        entry["status"] = 416
                        self.send_error(416)
                        return
                    entry["status"] = 206
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    entry["status"] = 200
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drop:  # promise the whole body, send half, close: a dropped connection
                    body = body[: len(body) // 2]
                self.wfile.write(body)
                self.wfile.flush()
                entry["sent"] = len(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, name: str, data: bytes) -> DownloadItem:
        self.files[name] = data
        return DownloadItem(url=f"{self.url}/{name}", sha256=hashlib.sha256(data).hexdigest(), filename=name)

    def requests(self, name: str) -> list[dict]:
        """The log for ``name``, once every handler has finished: the client can hold the whole body
        before the server thread records what it sent, so reading the log early would race."""
        with self.lock:
            entries = [e for e in self.log if e["path"] == name]
        for e in entries:
            assert e["done"].wait(timeout=5), f"handler for {name} did not finish"
        return entries


@pytest.fixture
def server():
    s = FileServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


def _cfg(**kw) -> AcquireConfig:
    base = dict(username=USER, password=PASSWORD, retries=3, backoff_s=0.01, timeout_s=5)
    base.update(kw)
    return AcquireConfig(**base)


PAYLOAD = bytes(range(256)) * 400  # 100 kB


def test_full_download_verified_and_not_refetched(server, tmp_path):
    item = server.add("data.bin", PAYLOAD)
    path = download(item, tmp_path, _cfg())
    assert path == tmp_path / "data.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()
    assert [e["range"] for e in server.requests("data.bin")] == [None]
    download(item, tmp_path, _cfg())  # complete and verified: no second request
    assert len(server.requests("data.bin")) == 1


def test_resume_after_dropped_connection_uses_range(server, tmp_path):
    item = server.add("big.bin", PAYLOAD)
    server.drop_once.add("big.bin")
    path = download(item, tmp_path, _cfg())
    assert path.read_bytes() == PAYLOAD
    reqs = server.requests("big.bin")
    assert [e["status"] for e in reqs] == [200, 206] and reqs[0]["range"] is None
    assert reqs[1]["range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert sum(e["sent"] for e in reqs) == len(PAYLOAD)  # nothing fetched twice


def test_resume_from_existing_part_file(server, tmp_path):
    item = server.add("arch.bin", PAYLOAD)
    (tmp_path / "arch.bin.part").write_bytes(PAYLOAD[:12345])  # left by an earlier, killed run
    download(item, tmp_path, _cfg())
    reqs = server.requests("arch.bin")
    assert [e["range"] for e in reqs] == ["bytes=12345-"] and reqs[0]["sent"] == len(PAYLOAD) - 12345
    assert (tmp_path / "arch.bin").read_bytes() == PAYLOAD


def test_retry_on_server_error(server, tmp_path):
    item = server.add("flaky.bin", PAYLOAD)
    server.fail_once.add("flaky.bin")
    assert download(item, tmp_path, _cfg()).read_bytes() == PAYLOAD
    assert [e["status"] for e in server.requests("flaky.bin")] == [503, 200]
    with pytest.raises(EchoError, match="HTTP 404"):
        download(DownloadItem(url=f"{server.url}/missing.bin"), tmp_path, _cfg())


def test_checksum_mismatch_deletes_and_raises_one_line(server, tmp_path):
    server.add("x.bin", PAYLOAD)
    item = DownloadItem(url=f"{server.url}/x.bin", sha256="0" * 64)
    with pytest.raises(EchoError, match="x.bin: sha256 mismatch") as e:
        download(item, tmp_path, _cfg())
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.part").exists()


def test_wrong_or_missing_credentials(server, tmp_path, monkeypatch):
    item = server.add("secret.bin", PAYLOAD)
    monkeypatch.delenv("ECHO_DATA_USER", raising=False)
    monkeypatch.delenv("ECHO_DATA_PASSWORD", raising=False)
    with pytest.raises(EchoError, match="HTTP 401.*credentials rejected") as e:
        download(item, tmp_path, _cfg(password="wrong"))
    assert "\n" not in str(e.value)
    assert len(server.requests("secret.bin")) == 1  # an auth failure is not retried
    with pytest.raises(EchoError, match="HTTP 401.*ECHO_DATA_USER"):
        download(item, tmp_path, _cfg(username="", password=""))
    assert not (tmp_path / "secret.bin").exists()
    monkeypatch.setenv("ECHO_DATA_USER", USER)
    monkeypatch.setenv("ECHO_DATA_PASSWORD", PASSWORD)
    assert download(item, tmp_path, _cfg(username="", password="")).read_bytes() == PAYLOAD


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_download_extract_and_build_manifest(server, tmp_path):
    staging = tmp_path / "staging"
    texts, _ = fx.make_librispeech(staging / "LibriSpeech", {"dev-clean": ["84"], "test-clean": ["61"]}, utts=1)
    item = server.add("dev-clean.tar.gz", _tar_gz({f"LibriSpeech/{k}": v for k, v in _tree_bytes(staging / "LibriSpeech").items()}))
    root = tmp_path / "corpus"
    cfg = RealCorpusConfig(source="librispeech", root=str(root), phonemes="none", acquire=_cfg(downloads=(item,)))
    df = build_real_corpus(cfg, tmp_path / "out")
    assert (root / "LibriSpeech" / "dev-clean" / "84").is_dir()
    assert (root / ".downloads" / "dev-clean.tar.gz.extracted").exists()
    assert set(df["utt_id"].str.removeprefix("ls_")) == set(texts)  # broken files were skipped
    assert all(Path(p).is_relative_to(root.resolve()) for p in df["path"])
    n_req = len(server.log)
    acquire("librispeech", root, _cfg(downloads=(item,)))  # verified archive, already extracted: no traffic
    assert len(server.log) == n_req


def test_zip_download_for_voxceleb1(server, tmp_path):
    members = {"wav/id10001/vidA/00001.wav": b"RIFF", "wav/id10002/vidB/00001.wav": b"RIFF"}
    item = server.add("vox1_test_wav.zip", _zip(members))
    root = acquire("voxceleb1", tmp_path / "vox1", _cfg(downloads=[{"url": item.url, "sha256": item.sha256}],
                                                         username=USER, password=PASSWORD))
    assert (root / "wav" / "id10002" / "vidB" / "00001.wav").read_bytes() == b"RIFF"
    check_layout("voxceleb1", root)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_unsafe_archive_members_are_refused(tmp_path, kind):
    members = {"ok/a.txt": b"a", "../evil.txt": b"x"}
    archive = tmp_path / f"bad.{kind}"
    archive.write_bytes(_tar_gz(members) if kind == "tar.gz" else _zip(members))
    root = tmp_path / "root"
    with pytest.raises(EchoError, match="unsafe member '../evil.txt'"):
        extract(archive, root)
    assert not (tmp_path / "evil.txt").exists() and not (root / "ok" / "a.txt").exists()


def test_local_root_checks_and_config_errors(tmp_path):
    with pytest.raises(EchoError, match="corpus root not found"):
        acquire("librispeech", tmp_path / "nope")
    (tmp_path / "train-clean-100" / "19" / "198").mkdir(parents=True)
    with pytest.raises(EchoError, match="does not look like librispeech"):
        acquire("librispeech", tmp_path)
    (tmp_path / "train-clean-100" / "19" / "198" / "19-198-0000.flac").write_bytes(b"")
    assert acquire("librispeech", tmp_path) == tmp_path.resolve()
    with pytest.raises(ConfigError, match="sha256"):
        DownloadItem(url="http://127.0.0.1/x", sha256="abc")
    with pytest.raises(ConfigError, match="url"):
        DownloadItem(url="ftp://example/x")
    with pytest.raises(ConfigError, match="unique"):
        AcquireConfig(downloads=[{"url": "http://127.0.0.1/a/x.zip"}, {"url": "http://127.0.0.1/b/x.zip"}])
    with pytest.raises(ConfigError, match="retries"):
        AcquireConfig(retries=-1)
