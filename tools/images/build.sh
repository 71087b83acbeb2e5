#!/usr/bin/env bash
# Build the operator and trainer images from docker/*.Dockerfile, unchanged: with Docker and the
# public base images where Docker runs, else with podman and base images made here from Debian
# packages (bases.sh). Prints one line per image: name, seconds, size.
#   tools/images/build.sh                 both
#   tools/images/build.sh operator        one
# IMAGE_REPOSITORY (default localhost/diffusion-operator) and IMAGE_TAG (default dev) name them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
repository="${IMAGE_REPOSITORY:-localhost/diffusion-operator}"
tag="${IMAGE_TAG:-dev}"
names=("$@")
[ "${#names[@]}" -gt 0 ] || names=(operator trainer)

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=(docker)
  base_args=()
else
  engine=("$here/podman.sh")
  # shellcheck disable=SC2207  # the build arguments are words without spaces
  base_args=($("$here/bases.sh"))
fi

for name in "${names[@]}"; do
  image="$repository/$name:$tag"
  started=$(date +%s)
  dockerfile="$root/docker/$name.Dockerfile"
  # The build stage gets a tag of its own: its layers stay as the cache of the next build
  # instead of looking dangling to the prune below.
  "${engine[@]}" build --network host -f "$dockerfile" "${base_args[@]}" --target build \
    -t "localhost/dtj-build-cache/$name:$tag" "$root" >&2
  "${engine[@]}" build --network host -f "$dockerfile" "${base_args[@]}" -t "$image" "$root" >&2
  size="$("${engine[@]}" image inspect --format '{{.Size}}' "$image")"
  echo "$image built in $(( $(date +%s) - started ))s, $(( size / 1000000 )) MB"
done
# Layers a rebuild replaced (gigabytes for the trainer) would otherwise pile up build by build.
"${engine[@]}" image prune --force >/dev/null
