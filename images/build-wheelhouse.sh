#!/usr/bin/env bash
# Fill images/wheelhouse-FLAVOUR/ with every wheel that images/requirements-FLAVOUR.txt pins, using the host's
# pip (`pip download`): on an air-gapped or CI machine, pip's own configuration points at a local mirror or
# wheel directory. The Dockerfile then installs from the wheelhouse with --no-index: no network during the build.
#
#   images/build-wheelhouse.sh cpu|cuda
#
# Idempotent: a wheelhouse complete for the current pins is left alone. The wheelhouse is git-ignored.
# Where the host's pip cannot see the CPU build of torch, point it at PyTorch's index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu images/build-wheelhouse.sh cpu
set -euo pipefail

flavour="${1:-cpu}"
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/requirements-$flavour.txt"
dest="$here/wheelhouse-$flavour"
if [[ ! -f "$req" ]]; then
  echo "[build-wheelhouse] no $req: the flavour must be cpu or cuda" >&2
  exit 2
fi
mkdir -p "$dest"
# Index lines in the requirements file (--extra-index-url for registry builds) are dropped: the host's own pip
# configuration says where wheels come from here (a local mirror on air-gapped machines).
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
grep -v -E '^[[:space:]]*(-|#|$)' "$req" >"$pins"
stamp="$dest/.pins.sha256"
want="$(sha256sum "$pins" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "[build-wheelhouse] $dest already holds every pinned wheel ($(find "$dest" -maxdepth 1 -name "*.whl" | wc -l) wheels, $(du -sh "$dest" | cut -f1))"
  exit 0
fi
echo "[build-wheelhouse] pip download $(wc -l <"$pins") pinned packages from $(basename "$req") -> $dest"
start=$(date +%s)
# The trial image runs CPython 3.11 on x86_64 glibc (Debian bookworm): fetch wheels for exactly that, whatever
# the host's own Python is.
# Debian bookworm has glibc 2.36: every manylinux tag up to 2_36 fits.
platforms=()
for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download -q --disable-pip-version-check -r "$pins" -d "$dest" \
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none "${platforms[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" >"$stamp"
echo "[build-wheelhouse] $(find "$dest" -maxdepth 1 -name "*.whl" | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $(( $(date +%s) - start )) s"
