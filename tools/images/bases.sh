#!/usr/bin/env bash
# Base images made here from Debian packages, for building the Dockerfiles where public base
# images cannot be pulled: Debian 12 with python3 (3.11) and this machine's CA certificates
# (package registries are reached through its TLS setup), and uv (the installed binary) in an
# otherwise empty image. Built once; prints the build arguments that select them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
podman_() { "$here/podman.sh" "$@"; }
UV_VERSION="$(uv --version | awk '{print $2}')"
python_image=localhost/dtj-base/python:3.11-bookworm
uv_image="localhost/dtj-base/uv:$UV_VERSION"
log() { echo "[images $(date +%H:%M:%S)] $*" >&2; }

exists() { podman_ image exists "$1"; }

build_python_base() {
  local rootfs
  rootfs="$(mktemp -d)/rootfs.tar"
  log "making $python_image with mmdebstrap"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share' \
    --customize-hook='chroot "$1" update-ca-certificates' \
    bookworm "$rootfs" >&2
  podman_ import --quiet --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    "$rootfs" "$python_image" >/dev/null
  rm -rf "$(dirname "$rootfs")"
}

build_uv_base() {
  local context
  context="$(mktemp -d)"
  local uv_bin  # the binary itself, not a version manager's shim script
  uv_bin="$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || command -v uv)"
  cp "$uv_bin" "$context/uv"
  printf 'FROM scratch\nCOPY uv /uv\n' >"$context/Containerfile"
  log "making $uv_image from $uv_bin"
  podman_ build --quiet -t "$uv_image" "$context" >/dev/null
  rm -rf "$context"
}

exists "$python_image" || build_python_base
exists "$uv_image" || build_uv_base
# The trainer's CUDA userland comes with torch's wheels; the CUDA base only adds driver glue.
echo "--build-arg PYTHON_IMAGE=$python_image --build-arg CUDA_BASE_IMAGE=$python_image"
echo "--build-arg UV_IMAGE=$uv_image --build-arg PYTHON_SOURCE=system --build-arg PYTHON_VERSION=3.11"
