#!/usr/bin/env bash
# Build the air-gapped base image: a Debian bookworm minbase root filesystem made with debootstrap and loaded
# with `docker import`. No container registry is needed (CI and air-gapped sites have none); only a Debian mirror
# (or a local one) for debootstrap. Real users with registry access do not need this: the Dockerfile's default
# base is python:3.11-slim.
#
#   images/build-base.sh            -> autoresearch-base:bookworm      (python3, python3-venv, ca-certificates)
#   images/build-base.sh --with-cc  -> autoresearch-base:bookworm-cc   (+ gcc, libc6-dev: the CUDA image needs a C
#                                      compiler at run time, Triton builds its kernel launchers with one)
#
# Environment: MIRROR (default: the first URI in /etc/apt/sources.list.d/debian.sources, else deb.debian.org),
# ROOTFS_DIR (default images/rootfs-<tag>, git-ignored; removed after the import), FORCE=1 rebuilds an existing tag.
# Needs root (debootstrap). Idempotent: an existing tag is kept.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
tag="bookworm"
include="python3,python3-venv,ca-certificates"
if [[ "${1:-}" == "--with-cc" ]]; then
  tag="bookworm-cc"
  include="$include,gcc,libc6-dev"
elif [[ -n "${1:-}" ]]; then
  echo "usage: $0 [--with-cc]" >&2
  exit 2
fi
image="autoresearch-base:$tag"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "[build-base] $image exists; keeping it (FORCE=1 rebuilds)"
  exit 0
fi

if [[ -z "${MIRROR:-}" ]]; then
  MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
if ! command -v debootstrap >/dev/null; then
  echo "[build-base] installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi

rootfs="${ROOTFS_DIR:-$here/rootfs-$tag}"
rm -rf "$rootfs"
trap 'rm -rf "$rootfs"' EXIT
echo "[build-base] debootstrap bookworm ($include) from $MIRROR into $rootfs"
start=$(date +%s)
debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
  echo "[build-base] debootstrap failed; last lines of $rootfs.log:" >&2
  tail -n 20 "$rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"
# Slim the image: apt lists, docs and caches are not needed at run time.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
echo "[build-base] docker import -> $image"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "autoresearch air-gapped base: debootstrap bookworm minbase + $include" \
  - "$image" >/dev/null
echo "[build-base] $image built in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
