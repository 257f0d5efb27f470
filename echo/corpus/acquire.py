"""Getting a real corpus onto local disk: check a local root, or download and unpack archives.

The corpora cannot be fetched anonymously (VoxCeleb needs a registration; mirrors vary), so the
user supplies the URLs, checksums and credentials. Downloads use only the standard library
(``urllib``): HTTP basic auth, ``Range`` resume from a ``.part`` file, retries with exponential
backoff, sha256 verification, then an atomic rename. Archives (.tar, .tar.gz/.tgz, .zip) are
unpacked into the root with every member checked to stay inside it.

Layouts recognised (``<root>`` is the configured root):

- voxceleb2: ``<root>/{dev,test}/aac/idNNNNN/<video>/<n>.m4a``, ``<root>/aac/id...``, ``<root>/id...``
- voxceleb1: ``<root>/wav/idNNNNN/<video>/<n>.wav``, ``<root>/{dev,test}/wav/id...``, ``<root>/id...``
- librispeech: ``<root>/[LibriSpeech/]<subset>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac``
  (or ``<root>`` being one subset directory)
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import logging
import os
import re
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from echo.config import check_fields, need, rule
from echo.errors import ConfigError, EchoError
from echo.io import write_text

__all__ = ["SOURCES", "LAYOUT_GLOBS", "DownloadItem", "AcquireConfig", "acquire", "check_layout",
           "download", "extract", "sha256_file"]

log = logging.getLogger(__name__)

SOURCES = ("voxceleb2", "voxceleb1", "librispeech")
# One file matching any of these proves the layout; globs are lazy, so the check stops at the first.
LAYOUT_GLOBS = {
    "voxceleb2": ("dev/aac/id*/*/*.m4a", "test/aac/id*/*/*.m4a", "aac/id*/*/*.m4a", "id*/*/*.m4a"),
    "voxceleb1": ("wav/id*/*/*.wav", "dev/wav/id*/*/*.wav", "test/wav/id*/*/*.wav", "id*/*/*.wav"),
    "librispeech": ("*/*/*/*-*-*.flac", "LibriSpeech/*/*/*/*-*-*.flac", "*/*/*-*-*.flac"),
}
_EXPECTED = {
    "voxceleb2": "<root>/{dev,test}/aac/idNNNNN/<video>/<n>.m4a or <root>/idNNNNN/<video>/<n>.m4a",
    "voxceleb1": "<root>/wav/idNNNNN/<video>/<n>.wav or <root>/idNNNNN/<video>/<n>.wav",
    "librispeech": "<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac",
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadItem:
    """One file to fetch: where from, its sha256 (lower-case hex; ``""`` skips the check with a
    warning, for mirrors that publish only MD5), and the file name to store it under."""

    url: str
    sha256: str = ""
    filename: str = ""

    def __post_init__(self) -> None:
        need(self, bool(re.match(r"^https?://", self.url)), "url", "an http(s) URL", self.url)
        object.__setattr__(self, "sha256", self.sha256.strip().lower())
        need(self, not self.sha256 or bool(_HEX64.match(self.sha256)), "sha256", "64 hex digits", self.sha256)
        name = self.filename or Path(urllib.request.url2pathname(self.url.split("?")[0])).name
        need(self, bool(name) and "/" not in name and "\\" not in name and name not in (".", ".."), "filename",
             "a plain file name", name)
        object.__setattr__(self, "filename", name)


@dataclass(frozen=True)
class AcquireConfig:
    """How to obtain the corpus; with no ``downloads`` the root must already hold it.

    Attributes:
        downloads: files to fetch (dicts with url/sha256/filename are accepted).
        download_dir: where archives are kept; ``""`` means ``<root>/.downloads``.
        username, password: basic-auth credentials; when empty, read from the environment
            variables named by ``username_env`` / ``password_env``.
        retries: extra attempts per file after a network failure (>= 0).
        backoff_s: first wait between attempts, doubled each time (>= 0).
        timeout_s: socket timeout per request (> 0).
        extract: unpack .tar/.tar.gz/.tgz/.zip downloads into the root.
        delete_archives: remove an archive once it was unpacked.
    """

    downloads: tuple[DownloadItem, ...] = ()
    download_dir: str = ""
    username: str = ""
    password: str = ""
    username_env: str = "ECHO_DATA_USER"
    password_env: str = "ECHO_DATA_PASSWORD"
    retries: int = field(default=5, metadata=rule(ge=0, le=100))
    backoff_s: float = field(default=2.0, metadata=rule(ge=0, le=600))
    timeout_s: float = field(default=60.0, metadata=rule(gt=0, le=3600))
    extract: bool = True
    delete_archives: bool = False

    def __post_init__(self) -> None:
        items = tuple(d if isinstance(d, DownloadItem) else DownloadItem(**_only(d, DownloadItem))
                      for d in self.downloads)
        object.__setattr__(self, "downloads", items)
        names = [d.filename for d in items]
        need(self, len(set(names)) == len(names), "downloads", "unique file names", names)
        check_fields(self)

    def credentials(self) -> tuple[str, str] | None:
        user = self.username or os.environ.get(self.username_env, "")
        password = self.password or os.environ.get(self.password_env, "")
        return (user, password) if user or password else None


def _only(d: Mapping[str, Any], cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"acquire.downloads: unknown key(s) {sorted(unknown)}, expected {sorted(names)}")
    return dict(d)


def acquire(source: str, root: str | os.PathLike, cfg: AcquireConfig = AcquireConfig()) -> Path:
    """Make sure ``root`` holds ``source`` in a known layout, downloading and unpacking if configured.

    Args:
        source: ``voxceleb2`` | ``voxceleb1`` | ``librispeech``.
        root: local corpus directory (created when downloading).
        cfg: download settings; with no ``downloads`` only the layout check runs.

    Returns:
        The resolved root.

    Raises:
        EchoError: one line, for a missing root, an unknown layout, or a failed download.
    """
    root = Path(root).expanduser().resolve()
    if cfg.downloads:
        root.mkdir(parents=True, exist_ok=True)
        ddir = Path(cfg.download_dir).expanduser().resolve() if cfg.download_dir else root / ".downloads"
        for item in cfg.downloads:
            path = download(item, ddir, cfg)
            if cfg.extract and _archive_kind(path):
                marker = path.with_name(path.name + ".extracted")
                if not marker.exists():  # written only after a complete extraction, so a crash re-extracts
                    extract(path, root)
                    write_text(marker, item.sha256 + "\n")
                if cfg.delete_archives:
                    path.unlink()
    check_layout(source, root)
    return root


def check_layout(source: str, root: str | os.PathLike) -> None:
    """Raise a one-line :class:`EchoError` unless ``root`` exists and matches ``source``'s layout."""
    if source not in SOURCES:
        raise ConfigError(f"real_corpus.source: expected one of {SOURCES}, got {source!r}")
    root = Path(root)
    if not root.is_dir():
        raise EchoError(f"{root}: corpus root not found (a directory laid out as {_EXPECTED[source]})")
    if not any(next(root.glob(g), None) is not None for g in LAYOUT_GLOBS[source]):
        raise EchoError(f"{root}: does not look like {source}, expected {_EXPECTED[source]}")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class _Retryable(Exception):
    """A transient failure (connection dropped, timeout, 5xx): try again from the .part file."""


def download(item: DownloadItem, dest_dir: str | os.PathLike, cfg: AcquireConfig = AcquireConfig()) -> Path:
    """Fetch ``item`` into ``dest_dir`` (resumable, verified, atomically renamed); return its path.

    A complete file already in place with the right checksum is not fetched again. Bytes already
    in ``<filename>.part`` are kept and the transfer continues with an HTTP ``Range`` request.

    Raises:
        EchoError: wrong credentials (401/403), missing file (404), checksum mismatch (the file is
            deleted), or failures that outlasted ``cfg.retries``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / item.filename
    if final.exists():
        if not item.sha256 or sha256_file(final) == item.sha256:
            log.info("%s: already downloaded", final)
            return final
        log.warning("%s: checksum differs from the configured one; downloading again", final)
        final.unlink()
    part = final.with_name(final.name + ".part")
    last_error = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        try:
            _fetch_into(item.url, part, cfg)
            break
        except _Retryable as e:
            last_error = str(e)
            log.info("%s: attempt %d/%d failed (%s)", item.url, attempt + 1, cfg.retries + 1, e)
    else:
        raise EchoError(f"{item.url}: download failed after {cfg.retries + 1} attempts ({last_error}); "
                        f"re-run to resume from {part}")
    if item.sha256:
        got = sha256_file(part)
        if got != item.sha256:
            part.unlink()
            raise EchoError(f"{item.filename}: sha256 mismatch (expected {item.sha256}, got {got}); "
                            "the file was deleted")
    else:
        log.warning("%s: no sha256 configured, integrity not verified", item.filename)
    os.replace(part, final)
    return final


def _fetch_into(url: str, part: Path, cfg: AcquireConfig) -> None:
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url)
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    cred = cfg.credentials()
    if cred:  # sent up front: urllib's auth handler would only answer a 401 challenge
        token = base64.b64encode(f"{cred[0]}:{cred[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        resp = urllib.request.urlopen(req, timeout=cfg.timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part already holds the whole file
            return
        if e.code in (401, 403):
            how = (f"check acquire.username/password or ${cfg.username_env}/${cfg.password_env}"
                   if cred else f"set acquire.username/password or ${cfg.username_env}/${cfg.password_env}")
            raise EchoError(f"{url}: HTTP {e.code} {e.reason}: credentials rejected; {how}") from None
        if e.code == 429 or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise EchoError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        if offset and resp.status == 206:
            mode = "ab"
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {offset}-"):
                raise EchoError(f"{url}: server answered range {crange!r} to a request from byte {offset}")
        else:  # 200: the server ignored Range (or there was nothing to resume), start over
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        try:
            with open(part, mode) as fh:
                while True:
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    received += len(block)
        except (OSError, http.client.HTTPException, socket.timeout) as e:
            raise _Retryable(f"connection lost after {offset + received} bytes ({type(e).__name__})") from None
    # http.client does not raise when the peer closes early, so compare with Content-Length.
    if expected is not None and received < expected:
        raise _Retryable(f"connection closed after {offset + received} of {offset + expected} bytes")


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    return None


def _inside(root: Path, name: str) -> bool:
    target = (root / name).resolve()
    return target == root or root in target.parents


def extract(archive: str | os.PathLike, root: str | os.PathLike) -> None:
    """Unpack a .tar(.gz/.bz2/.xz)/.tgz/.zip archive into ``root``, refusing any member that would
    land outside it (absolute paths, ``..``, links pointing out, device files).

    Raises:
        EchoError: unsafe member (nothing is extracted) or unreadable archive.
    """
    archive, root = Path(archive), Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    kind = _archive_kind(archive)
    try:
        if kind == "tar":
            with tarfile.open(archive) as tar:
                for m in tar.getmembers():
                    bad = (not _inside(root, m.name)
                           or (m.issym() and not _inside(root, str(Path(m.name).parent / m.linkname)))
                           or (m.islnk() and not _inside(root, m.linkname))
                           or m.isdev())
                    if bad:
                        raise EchoError(f"{archive}: unsafe member {m.name!r} would escape {root}; nothing extracted")
                tar.extractall(root, filter="data")  # the stdlib's own guard as a second line
        elif kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if not _inside(root, name):
                        raise EchoError(f"{archive}: unsafe member {name!r} would escape {root}; nothing extracted")
                zf.extractall(root)
        else:
            raise EchoError(f"{archive}: not an archive, expected .tar, .tar.gz, .tgz or .zip")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise EchoError(f"{archive}: cannot unpack ({e})") from None
    log.info("unpacked %s into %s", archive, root)
