#!/usr/bin/env bash
# A Debian base image without any image registry: debootstrap a minimal bookworm from the
# Debian mirror apt already uses, and import it into podman as $1 (default
# localhost/debian-min:bookworm). Does nothing when the image exists. About a minute.
set -euo pipefail
image=${1:-localhost/debian-min:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/podman/containers.conf}
if podman image exists "$image"; then
    exit 0
fi
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "base image: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
tar -C "$rootfs" -c . | podman import - "$image" >/dev/null
echo "base image: $image" >&2
