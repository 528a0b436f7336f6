"""Host disk: a hostile model costs the host at most the output cap (plus a small margin) while it is copied out.

The candidate writes /out/model.pt2 itself: sparse (holes cost it nothing in its tmpfs, but the engine's archive
expands them) or dense, just under policy.limits.output_mb, or sparse and far over it. While the trial runs, a
sampler thread adds up the disk blocks the runner holds for it: every regular file under the test's directory (the
trial's work dir, with the slot's model copy) and every regular file this process has open (an unlinked temp file
too: it still takes space until closed). The peak growth over the first sample must stay under the cap plus
MARGIN_MB. The file system's own free space (statvfs) is sampled too and reported; it is asserted only in CI,
where no other session writes to the disk meanwhile.

The unit tests at the end feed the parser (runner/sandbox/archive.py) archives built with tarfile: what no real
engine sends, but what it must refuse anyway.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from runner.sandbox import archive
from tests.sandbox_kit import candidate, policy, trial

CAP_MB = 48                      # the test policy's output cap: small, so a trial is fast
MARGIN_MB = 8                    # what the host may hold beyond the cap (json-file logs and small files aside)
SAMPLE_S = 0.002                 # the sampler's period
MB = 1 << 20


class DiskSampler:
    """Peak disk blocks held for a trial: files under root plus this process's open regular files, sampled."""

    def __init__(self, root: Path):
        self.root, self.samples, self.free = Path(root), [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="disk-sampler")

    def held(self) -> int:
        seen, total = set(), 0
        paths = [os.path.join(d, f) for d, _, files in os.walk(self.root) for f in files]
        try:
            paths += [f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd")]
        except OSError:
            pass
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
        return total

    def _free(self) -> int:
        v = os.statvfs(self.root)
        return v.f_bavail * v.f_frsize

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.held())
            self.free.append(self._free())
            time.sleep(SAMPLE_S)

    def __enter__(self) -> "DiskSampler":
        self.samples.append(self.held())
        self.free.append(self._free())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak_growth(self) -> int:
        return max(self.samples) - self.samples[0]

    @property
    def free_drop(self) -> int:
        return self.free[0] - min(self.free)


def _run(tmp_path, trial_image, sandbox_data, source: str):
    with DiskSampler(tmp_path) as disk:
        out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, source), sandbox_data,
                       pol=policy(limits={"output_mb": CAP_MB}))
    print(f"\npeak host disk held for the trial: {disk.peak_growth / MB:.1f} MiB over {len(disk.samples)} samples; "
          f"file system free space dropped by at most {disk.free_drop / MB:.1f} MiB (cap {CAP_MB} MiB)")
    return out, disk


def _within_cap(disk: DiskSampler, what: str) -> None:
    limit = (CAP_MB + MARGIN_MB) * MB
    assert disk.peak_growth <= limit, f"{what}: the host held {disk.peak_growth / MB:.1f} MiB, over {limit / MB} MiB"
    if os.environ.get("CI") == "true":
        assert disk.free_drop <= limit, f"{what}: free space dropped {disk.free_drop / MB:.1f} MiB"


@pytest.mark.docker
def test_a_sparse_model_just_under_the_output_cap_costs_the_host_no_more_than_the_cap(
        tmp_path, trial_image, sandbox_data):
    out, disk = _run(tmp_path, trial_image, sandbox_data, f"""
        with open("/out/model.pt2", "wb") as f:
            f.write(b"PK\\x03\\x04")
            f.truncate({CAP_MB * MB - MB})            # holes: next to nothing in the tmpfs, {CAP_MB - 1} MiB in a tar
    """)
    assert out.status == "export_failed" and out.error.startswith("the exported model is invalid"), out.error
    assert out.timings["copy_model_s"] >= 0                         # it was copied out, in full ...
    _within_cap(disk, "a sparse model")                             # ... and cost the host at most the cap


@pytest.mark.docker
def test_a_dense_model_just_under_the_output_cap_costs_the_host_its_size_once(tmp_path, trial_image, sandbox_data):
    out, disk = _run(tmp_path, trial_image, sandbox_data, f"""
        import os
        with open("/out/model.pt2", "wb") as f:
            f.write(b"PK\\x03\\x04")
            for _ in range({CAP_MB - 2}):
                f.write(os.urandom({MB}))
    """)
    assert out.status == "export_failed" and out.error.startswith("the exported model is invalid"), out.error
    assert disk.peak_growth >= (CAP_MB - 2) * MB                    # the copy really landed on the host ...
    _within_cap(disk, "a dense model")                              # ... once


@pytest.mark.docker
def test_a_sparse_model_far_over_the_output_cap_is_refused_before_a_byte_is_copied(
        tmp_path, trial_image, sandbox_data):
    out, disk = _run(tmp_path, trial_image, sandbox_data, f"""
        with open("/out/model.pt2", "wb") as f:
            f.truncate({64 * CAP_MB * MB})
    """)
    assert out.status == "export_failed" and "over the cap" in out.error, out.error
    assert "eval_started_at" not in out.timings
    assert disk.peak_growth <= MARGIN_MB * MB


# --------------------------------------------------------------------------- the parser, on crafted archives

def _chunks(archive_bytes: bytes, size: int = 1 << 16):
    """The archive in chunks, as the engine's stream delivers it."""
    return (archive_bytes[i:i + size] for i in range(0, len(archive_bytes), size))


def _tar(*members: tuple[str, bytes], fmt=tarfile.USTAR_FORMAT, kind=tarfile.REGTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"comment": "x"}
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def test_the_copy_is_written_once_with_its_holes_and_nothing_else(tmp_path):
    data = b"head" + bytes(5 * MB) + b"tail" + bytes(2 * MB)
    dest = tmp_path / "model.pt2"
    assert archive.read_one_file(_chunks(_tar(("model.pt2", data))), "/out/model.pt2", 8 * MB, dest) is None
    assert dest.read_bytes() == data
    assert dest.stat().st_blocks * 512 < 3 * MB                     # the zero MiBs stayed holes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]
    pax = _tar(("result.json", b"{}"), fmt=tarfile.PAX_FORMAT)
    assert archive.read_one_file(_chunks(pax, 7), "/out/result.json", 100) == b"{}"


@pytest.mark.parametrize("archive_bytes, why", [
    (_tar(("a", b"x" * 10), ("b", b"y")), "more than one entry"),
    (_tar(("a", b"x" * 200)), "over the cap"),                       # the engine's stat may have said 10
    (_tar(("a", b"x" * 50))[:512 + 20], "unreadable"),                # cut short in the member's data
    (_tar(("a", b""), kind=tarfile.SYMTYPE), "not a regular file"),
    (_tar(("a", b""), kind=tarfile.FIFOTYPE), "not a regular file"),
    (bytes(1024), "empty archive"),
    (b"", "unreadable"),
    (_tar(("a", b"x" * 100)) + b"\xff" * (200 * 1024), "grew past the cap"),   # a stream with no end
])
def test_what_is_not_one_regular_file_under_the_cap_is_refused_and_leaves_nothing(tmp_path, archive_bytes, why):
    dest = tmp_path / "out.bin"
    with pytest.raises(archive.RefusedFile, match=why):
        archive.read_one_file(_chunks(archive_bytes), "/out/x", 100, dest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stat, why", [
    ({"mode": 0o644, "size": 101}, "over the cap"),
    ({"mode": 0o777 | archive.GO_MODE_SYMLINK, "size": 5, "linkTarget": "/data/x"}, "link or directory"),
    ({"mode": 0o755 | archive.GO_MODE_DIR, "size": 4096}, "link or directory"),
])
def test_the_engines_stat_alone_refuses_links_directories_and_oversize(stat, why):
    with pytest.raises(archive.RefusedFile, match=why):
        archive.check_stat(stat, "/out/x", 100)
    archive.check_stat({"mode": 0o644, "size": 100}, "/out/x", 100)
