#!/usr/bin/env bash
# Install everything the project needs on a fresh machine (idempotent and fast when done before):
# Debian tools used by the local control plane, its real node (containerd, runc, CNI plugins,
# iptables), the image builds (podman, mmdebstrap), zsh (the completion script's test), uv, and
# the locked Python environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV_VERSION=0.13.9

log() { echo "[bootstrap] $*" >&2; }

install_debian_tools() {
  local missing=()
  for tool in openssl:openssl curl:curl flock:util-linux setsid:util-linux ip:iproute2 make:make \
    podman:podman runc:runc mmdebstrap:mmdebstrap containerd:containerd iptables:iptables \
    /usr/lib/cni/bridge:containernetworking-plugins zsh:zsh; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u)
}

check_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "Go >= 1.25 is needed to build the local control plane (https://go.dev/doc/install)"
    exit 1
  fi
}

install_uv() {
  if command -v uv >/dev/null 2>&1 && [ "$(uv --version | awk '{print $2}')" = "$UV_VERSION" ]; then
    return 0
  fi
  log "installing uv $UV_VERSION from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
}

install_debian_tools
check_go
install_uv
# The lock file pins every package; uv's cache (~/.cache/uv) keeps PyTorch between runs.
uv sync --frozen --all-extras --quiet
