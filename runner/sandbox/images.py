"""The trial image: its content-hash tag, and building it through docker-py with progress.

TRUSTED CODE (host side). The image carries Python, torch and the trusted trainer code (harness, evaluator, data
format, presets), never trainer/train.py nor trainer/prepare. Its tag is a content hash of everything that goes
in: the Dockerfile, the flavour's requirement pins, the trusted trainer files, the flavour and the base image name
(`autoresearch-trial:cpu-<12 hex>`), so a tag names one recipe and `build` reuses an existing tag. The image id
(`sha256:...`) is what every trial records.

The build context is made here, file by file (not from the working directory), so the hash and the context are
the same list by construction; `docker compose build` uses .dockerignore, which excludes the same files.

Bases: `python:3.11-slim` from a registry for real users; on air-gapped and CI machines the local
`autoresearch-base:bookworm` made by images/build-base.sh (debootstrap + docker import), with the Python
packages from images/wheelhouse-FLAVOUR/ made by images/build-wheelhouse.sh. `airgapped=None` picks the local
base when it exists.

    python -m runner.sandbox.images build --flavour cpu [--airgapped]    # prints the tag; used by .ci/setup-docker.sh
    python -m runner.sandbox.images tag --flavour cpu                     # the tag a build would make
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InfraError, UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
REPOSITORY = "autoresearch-trial"
FLAVOURS = ("cpu", "cuda")
REGISTRY_BASE = "python:3.11-slim"
AIRGAPPED_BASE = {"cpu": "autoresearch-base:bookworm", "cuda": "autoresearch-base:bookworm-cc"}
BASE_ENV = "AUTORESEARCH_BASE_IMAGE"  # overrides the base image (and so the tag)
# trainer/ entries that never go into the image: the untrusted candidate, host-only tools.
HOST_ONLY = {"train.py", "direct.py", "prepare"}
_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".md", ".txt"}
LABEL_CONTENT = "autoresearch.content"
LABEL_FLAVOUR = "autoresearch.flavour"
LABEL_BASE = "autoresearch.base"


@dataclass(frozen=True)
class TrialImage:
    """A trial image in the engine: `tag` names the recipe, `id` (sha256:...) the exact bytes."""
    tag: str
    id: str
    flavour: str
    base: str
    size_bytes: int
    reused: bool = False         # the tag existed; nothing was built
    build_seconds: float = 0.0


def _check_flavour(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise UserError(f"unknown image flavour {flavour!r}; use one of: {', '.join(FLAVOURS)}")


def trainer_files() -> list[tuple[str, Path]]:
    """(path in the context, host path) of every trusted trainer file baked into the image."""
    root = REPO_ROOT / "trainer"
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in HOST_ONLY or "__pycache__" in rel.parts or p.name.startswith("."):
            continue
        if p.is_file() and not p.is_symlink() and p.suffix in _SUFFIXES:
            out.append((f"trainer/{rel.as_posix()}", p))
    return out


def recipe_files(flavour: str) -> list[tuple[str, Path]]:
    """Everything that determines the image except the wheels (which the pins determine)."""
    _check_flavour(flavour)
    files = [("Dockerfile", REPO_ROOT / "Dockerfile")]
    files += [(f"images/requirements-{f}.txt", IMAGES_DIR / f"requirements-{f}.txt") for f in FLAVOURS]
    return files + trainer_files()


def wheelhouse(flavour: str) -> Path:
    return IMAGES_DIR / f"wheelhouse-{flavour}"


def wheels(flavour: str) -> list[Path]:
    d = wheelhouse(flavour)
    return sorted(d.glob("*.whl")) if d.is_dir() else []


def content_hash(flavour: str, base: str) -> str:
    h = hashlib.sha256()
    h.update(f"flavour={flavour}\nbase={base}\n".encode())
    for name, path in recipe_files(flavour):
        if name.startswith("images/requirements-") and not name.endswith(f"-{flavour}.txt"):
            continue  # the other flavour's pins do not change this image
        data = path.read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def base_image(flavour: str, airgapped: bool | None = None, client=None) -> str:
    """The base to build on: $AUTORESEARCH_BASE_IMAGE, else the local air-gapped base when asked for (or, with
    airgapped=None, when it exists in the engine), else python:3.11-slim from a registry."""
    _check_flavour(flavour)
    if os.environ.get(BASE_ENV):
        return os.environ[BASE_ENV]
    local = AIRGAPPED_BASE[flavour]
    if airgapped is None:
        airgapped = client is not None and _image_or_none(client, local) is not None
    return local if airgapped else REGISTRY_BASE


def tag_for(flavour: str, base: str) -> str:
    return f"{REPOSITORY}:{flavour}-{content_hash(flavour, base)[:12]}"


def expected_tag(flavour: str = "cpu", client=None) -> str:
    """The tag `build(flavour)` makes (or reuses) on this machine; what a policy with `image: null` runs."""
    if client is None:
        from .preflight import connect
        client = connect()
    return tag_for(flavour, base_image(flavour, None, client))


def _image_or_none(client, ref: str):
    import docker.errors
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:
        raise InfraError(f"the Docker engine failed to look up image {ref}: {e.explanation or e}; "
                         "check the engine with `docker info`") from None


def find(flavour: str = "cpu", client=None) -> TrialImage | None:
    """The trial image for the current recipe, if it has been built; None otherwise."""
    from .preflight import connect
    client = client or connect()
    base = base_image(flavour, None, client)
    tag = tag_for(flavour, base)
    img = _image_or_none(client, tag)
    if img is None:
        return None
    return TrialImage(tag, img.id, flavour, base, int(img.attrs.get("Size") or 0), reused=True)


def _context(flavour: str, with_wheels: bool) -> tempfile.SpooledTemporaryFile:
    """A tar of exactly the recipe files (+ the flavour's wheels), with fixed metadata (reproducible)."""
    buf = tempfile.SpooledTemporaryFile(max_size=64 << 20)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = recipe_files(flavour) + (
            [(f"images/wheelhouse-{flavour}/{w.name}", w) for w in wheels(flavour)] if with_wheels else [])
        for name, path in entries:
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
            with open(path, "rb") as f:
                tar.addfile(info, f)
    buf.seek(0)
    return buf


def build(flavour: str = "cpu", airgapped: bool | None = None,
          on_progress: Callable[[str], None] | None = None, client=None, nocache: bool = False) -> TrialImage:
    """Build (or reuse) the trial image. airgapped=True: the local debootstrap base and the wheelhouse, no network;
    False: python:3.11-slim and the package index; None: air-gapped when the local base exists."""
    import docker.errors
    from .preflight import connect
    _check_flavour(flavour)
    client = client or connect()
    say = on_progress or (lambda line: None)
    base = base_image(flavour, airgapped, client)
    tag = tag_for(flavour, base)
    if not nocache and (img := _image_or_none(client, tag)) is not None:
        say(f"{tag} exists ({img.id[:19]}); reusing it")
        return TrialImage(tag, img.id, flavour, base, int(img.attrs.get("Size") or 0), reused=True)
    local_base = base in AIRGAPPED_BASE.values()
    if local_base and _image_or_none(client, base) is None:
        extra = " --with-cc" if flavour == "cuda" else ""
        raise UserError(f"air-gapped base image {base} is missing; build it with `images/build-base.sh{extra}` "
                        "(or build without --airgapped to use python:3.11-slim from a registry)")
    have_wheels = bool(wheels(flavour))
    if local_base and not have_wheels:
        raise UserError(f"air-gapped build needs wheels in {wheelhouse(flavour)}, found none; "
                        f"run `images/build-wheelhouse.sh {flavour}`")
    say(f"building {tag} on {base} ({'wheelhouse, no index' if have_wheels else 'package index'})")
    start = time.monotonic()
    context = _context(flavour, have_wheels)
    labels = {LABEL_CONTENT: content_hash(flavour, base), LABEL_FLAVOUR: flavour, LABEL_BASE: base}
    last = []
    try:
        stream = client.api.build(fileobj=context, custom_context=True, encoding=None, tag=tag, rm=True,
                                  forcerm=True, pull=False, nocache=nocache, decode=True, labels=labels,
                                  buildargs={"BASE_IMAGE": base, "FLAVOUR": flavour})
        for chunk in stream:
            if "error" in chunk:
                detail = str(chunk.get("error", "")).strip().splitlines() or ["(no detail)"]
                tail = " | ".join(x.strip() for x in last[-3:] if x.strip())
                raise InfraError(f"building {tag} failed: {detail[-1]} (last output: {tail}); "
                                 "see docs/images.md for air-gapped builds")
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    last.append(line)
                    del last[:-20]
                    say(line.rstrip())
    except docker.errors.APIError as e:
        raise InfraError(f"the Docker engine refused to build {tag}: {e.explanation or e}") from None
    finally:
        context.close()
    img = _image_or_none(client, tag)
    if img is None:
        raise InfraError(f"the build of {tag} ended without an image; run with progress shown to see why")
    seconds = time.monotonic() - start
    say(f"built {tag} ({img.id[:19]}, {int(img.attrs.get('Size') or 0) / 1e6:.0f} MB) in {seconds:.0f} s")
    return TrialImage(tag, img.id, flavour, base, int(img.attrs.get("Size") or 0), False, seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.sandbox.images", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["build", "tag"])
    ap.add_argument("--flavour", choices=FLAVOURS, default="cpu")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--airgapped", dest="airgapped", action="store_true", default=None,
                      help="local debootstrap base + wheelhouse, no network")
    mode.add_argument("--registry", dest="airgapped", action="store_false", help="python:3.11-slim + the index")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.action == "tag":
            from .preflight import connect
            print(tag_for(args.flavour, base_image(args.flavour, args.airgapped, connect())))
            return 0
        say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
        img = build(args.flavour, args.airgapped, say)
        print(img.tag)
        return 0
    except (UserError, InfraError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
