#!/usr/bin/env bash
# The pod sandbox ("pause") image of the local real node, built here from pause/main.go into an
# otherwise empty image: no registry to pull registry.k8s.io/pause from. Prints its name.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sha256sum "$here/pause/main.go" | cut -c1-12)"
image="localhost/dtj-node/pause:$version"
if ! "$here/podman.sh" image exists "$image"; then
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  (cd "$here/pause" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
    go build -ldflags "-s -w" -o "$context/pause" .)
  cp "$here/pause/Dockerfile" "$context/"
  "$here/podman.sh" build --quiet -t "$image" "$context" >/dev/null
fi
echo "$image"
