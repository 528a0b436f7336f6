"""One file copied out of a container through the engine's archive API, as hostile input. TRUSTED CODE (host side).

The engine answers `GET /containers/{id}/archive?path=...` with a stat of the path (a header) and a tar stream of
it. A file is taken only if the archive holds exactly one regular file of at most max_bytes (no link, directory,
device, FIFO, sparse or second member). Besides the file's content, it guarantees:

  host disk  the stream is parsed as it arrives and the file's bytes go straight into their destination: no copy of
             the archive is ever stored, and the bytes are counted as they are written (never trusting a size the
             stream claims), so the host holds at most max_bytes for the file. The tar stream expands a sparse
             file's holes into zeros; runs of zeros (whole BLOCKs) are written back as holes, so a sparse file costs
             the host about what it cost the container.
  the engine the engine holds the container's lock while it sends an archive, until the client has read all of it
             or closed the connection; the connection is always closed when the copy ends, a refused file's at
             once, so a hostile file never holds up the container's removal.

`read_one_file` is the parser on its own (any iterable of chunks), for tests on crafted archives.
"""
from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

BLOCK = 1 << 20                 # bytes read and written at a time; an all-zero BLOCK of the file becomes a hole
TAR_OVERHEAD = 64 * 1024        # headers, PAX records and padding the archive may add to the file's bytes
GO_MODE_DIR, GO_MODE_SYMLINK = 1 << 31, 1 << 27   # Go's os.FileMode bits in the engine's stat
_ZERO = bytes(BLOCK)


class RefusedFile(Exception):
    """A file copied out of a container was not a single regular file under the cap. str() is one line."""


def open_archive(container, path: str):
    """The engine's answer for path in container: (the streamed HTTP response, its stat dict). RefusedFile if the
    path does not exist; docker.errors.APIError for any other engine error. The caller closes the response."""
    import docker.errors
    import docker.utils
    import requests
    api = container.client.api
    url = f"{api.base_url}/v{api.api_version}/containers/{container.id}/archive"
    res = api.get(url, params={"path": path}, stream=True, headers={"Accept-Encoding": "identity"},
                  timeout=api.timeout)
    if res.status_code == 404:
        res.close()
        raise RefusedFile(f"{path} does not exist")
    try:
        res.raise_for_status()
    except requests.exceptions.HTTPError as e:
        res.close()
        raise docker.errors.create_api_error_from_http_exception(e) from None
    encoded = res.headers.get("x-docker-container-path-stat")
    return res, (docker.utils.decode_json_header(encoded) if encoded else {})


def check_stat(stat: dict, path: str, max_bytes: int) -> None:
    """Refuse on the engine's stat alone (before a byte is read): a link, a directory, or over the cap."""
    mode = int(stat.get("mode", 0))
    if stat.get("linkTarget") or mode & GO_MODE_DIR or mode & GO_MODE_SYMLINK:
        raise RefusedFile(f"{path} is a link or directory, not a regular file")
    if int(stat.get("size", 0)) > max_bytes:
        raise RefusedFile(f"{path} is {int(stat['size']):,} bytes, over the cap of {max_bytes:,}")


class _Capped(io.RawIOBase):
    """Chunks as a readable file for tarfile's stream mode; refuses to read more than limit bytes in all."""

    def __init__(self, chunks: Iterable[bytes], limit: int, path: str, max_bytes: int):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._head, self._pos, self.total = b"", 0, 0
        self._limit, self._path, self._max = limit, path, max_bytes

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._limit + 1
        parts, want = [], n
        while want > 0:
            if self._pos >= len(self._head):
                self._head, self._pos = next(self._chunks, b""), 0
                if not self._head:
                    break
                self.total += len(self._head)
                if self.total > self._limit:
                    raise RefusedFile(f"{self._path} grew past the cap of {self._max:,} bytes while being copied")
            part = self._head[self._pos:self._pos + want]
            self._pos += len(part)
            want -= len(part)
            parts.append(part)
        return b"".join(parts)


def read_one_file(chunks: Iterable[bytes], path: str, max_bytes: int, dest: Path | None = None) -> bytes | None:
    """Parse the archive as it streams: its one regular file's bytes, or with dest a new file there (never through
    an existing file or link; holes kept) and None. RefusedFile otherwise, and then nothing is left at dest."""
    stream, created = _Capped(chunks, max_bytes + TAR_OVERHEAD, path, max_bytes), False
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=BLOCK) as tar:
            member = tar.next()
            if member is None:
                raise RefusedFile(f"{path} is not a single regular file: empty archive")
            if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
                raise RefusedFile(f"{path} is not a single regular file: its archive entry is of type "
                                  f"{member.type!r}, not a regular file")   # the entry's name is hostile: not shown
            if member.size > max_bytes:
                raise RefusedFile(f"{path} is {member.size:,} bytes, over the cap of {max_bytes:,}")
            src = tar.extractfile(member)
            if dest is None:
                data = _copy(src, io.BytesIO(), path, max_bytes).getvalue()
            else:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                created = True
                with os.fdopen(fd, "wb") as f:
                    _copy(src, f, path, max_bytes, holes=True)
            if tar.next() is not None:
                raise RefusedFile(f"{path} is not a single regular file: the archive holds more than one entry")
            return None if dest is not None else data
    except BaseException as e:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(dest)
        if isinstance(e, tarfile.TarError):
            raise RefusedFile(f"the engine's archive of {path} is unreadable: {e}") from None
        raise


def _copy(src, f, path: str, max_bytes: int, holes: bool = False):
    """src -> f in BLOCKs, counting what is written (at most max_bytes); all-zero BLOCKs skipped as holes."""
    written = 0
    while block := src.read(BLOCK):
        written += len(block)
        if written > max_bytes:
            raise RefusedFile(f"{path} grew past the cap of {max_bytes:,} bytes while being copied")
        if holes and len(block) == BLOCK and block == _ZERO:
            f.seek(BLOCK, os.SEEK_CUR)
        else:
            f.write(block)
    if holes:
        f.truncate(written)                  # a file that ends in a hole gets its length
    return f
