"""The download: one HTTP(S) file into a cache, resumable, retried with backoff, checksummed (standard library only).

TRUSTED CODE (host only). The bytes come from the network and are checked before use:
- the file grows as NAME.part; after a dropped connection or a crash the next attempt asks for the rest with an
  HTTP Range request (a server that ignores Range gets a fresh download);
- network errors and HTTP 429/5xx are retried with exponential backoff; other HTTP errors fail at once;
- the sha256 is verified when one is known (the caller's table, or the X-Linked-Etag header that Hugging Face sends
  with large files, also when it comes on a redirect); a mismatch deletes the .part and tries again;
- the caller's `check` (for parquet: "the file opens") runs before the .part is renamed to NAME, so a file under
  its final name has always passed every check.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .errors import PrepareError

CHUNK = 1 << 20
USER_AGENT = "autoresearch-caged-prepare/0.1"
_SHA256 = re.compile(r'^(?:W/)?"?([0-9a-f]{64})"?$')
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class _Retry(Exception):
    """One attempt failed in a way that another attempt may fix."""


class _RedirectRecorder(urllib.request.HTTPRedirectHandler):
    """Follows redirects like the default handler and remembers the headers of every hop."""

    def __init__(self):
        self.hops = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)  # keeps the Range header


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, sha256: str | None = None, *, retries: int = 5, backoff: float = 1.0,
          timeout: float = 60.0, check: Callable[[Path], None] | None = None,
          log: Callable[[str], None] = print) -> str:
    """Make `dest` a verified copy of `url`; returns its sha256. Reuses a verified `dest` without any traffic.

    Raises PrepareError (one line) when the file cannot be had after `retries` retries, is not found, or fails
    its checks.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        digest = sha256_of(dest)
        if sha256 is None or digest == sha256:
            return digest
        log(f"cached {dest} does not match its sha256; downloading it again")
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    server_sha = None
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            log(f"retrying {url} in {delay:.1f}s (attempt {attempt + 1} of {retries + 1}): {last_error}")
            time.sleep(delay)
        try:
            server_sha = _attempt(url, part, timeout, log) or server_sha
        except _Retry as e:
            last_error = str(e)
            continue
        digest = sha256_of(part)
        want = sha256 or server_sha
        if want and digest != want:
            part.unlink()
            last_error = f"sha256 {digest[:12]}... does not match the expected {want[:12]}..."
            continue
        if check is not None:
            try:
                check(part)
            except Exception as e:  # noqa: BLE001 - any failure of the check means a bad file
                part.unlink()
                raise PrepareError(f"downloaded {url} but it is not usable ({_one_line(e)}); the server sent a bad "
                                   "file, check --base-url / AUTORESEARCH_DATA_URL") from None
        os.replace(part, dest)
        return digest
    raise PrepareError(f"download of {url} failed after {retries + 1} attempts ({last_error}); check the network "
                       f"and --base-url / AUTORESEARCH_DATA_URL, then run the same command again to resume"
                       f"{f' from {part.stat().st_size} bytes' if part.exists() else ''}")


def _attempt(url: str, part: Path, timeout: float, log) -> str | None:
    """One GET, appending to `part` from its current size. Returns the server's sha256 if it sent one."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    redirects = _RedirectRecorder()
    try:
        resp = urllib.request.build_opener(redirects).open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked past the end: the .part is bogus or complete; start over to be sure
            part.unlink()
            raise _Retry("server refused the resume range (HTTP 416)") from None
        if e.code in _RETRYABLE_HTTP:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise PrepareError(f"cannot download {url}: HTTP {e.code} {e.reason}; check the name and --base-url / "
                           "AUTORESEARCH_DATA_URL") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(_one_line(getattr(e, "reason", e))) from None
    with resp:
        server_sha = next(filter(None, map(_server_sha256, [*redirects.hops, resp.headers])), None)
        if have and resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Retry(f"server resumed at byte {start}, not {have}")
            mode = "ab"
            log(f"resuming {url} at {have} bytes")
        else:
            mode, have = "wb", 0
        expected = resp.headers.get("Content-Length")
        expected = int(expected) if expected and expected.isdigit() else None
        got = 0
        try:
            with open(part, mode) as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    got += len(block)
        except (OSError, http.client.HTTPException, socket.timeout) as e:
            raise _Retry(f"connection lost after {have + got} bytes ({_one_line(e)})") from None
        if expected is not None and got < expected:
            raise _Retry(f"connection closed after {have + got} of {have + expected} bytes")
    return server_sha


def _server_sha256(headers) -> str | None:
    m = _SHA256.match((headers.get("X-Linked-Etag") or "").strip())
    return m.group(1) if m else None


def _range_start(content_range: str) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(m.group(1)) if m else None


def _one_line(e) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
