#!/usr/bin/env bash
# `make image`: build the connector's container image with podman.
#
# Installs podman, runc and debootstrap with apt-get when absent, builds the base image
# (deploy/base-image.sh) when BASE is the local one and missing, builds the wheels of the
# connector and its dependencies on the host, then the image. podman reads its settings from
# deploy/podman/containers.conf (runc, no default ulimits); nothing under /etc is changed.
#
#   BASE   base image (default localhost/debian-min:bookworm, made here by debootstrap)
#   IMAGE  tag of the result (default localhost/connector:dev)
#   PYTHON the interpreter that builds the wheels (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-localhost/debian-min:bookworm}
IMAGE=${IMAGE:-localhost/connector:dev}
PYTHON=${PYTHON:-.venv/bin/python}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}

missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "image: installing ${missing[*]} (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi
if [ "$BASE" = localhost/debian-min:bookworm ]; then
    deploy/base-image.sh "$BASE"
fi

# Dependencies and the connector in two folders (two layers of the image). Same bytes, same
# time stamps: podman reuses a layer whose wheels did not change (hatchling builds the
# connector's wheel reproducibly). The dependencies' wheels are made again when
# pyproject.toml changes (or after rm -rf build/wheels), the connector's every time.
stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat build/wheels/deps/pyproject.sha256 2>/dev/null)" != "$stamp" ]; then
    rm -rf build/wheels
    "$PYTHON" -m pip wheel -q --wheel-dir build/wheels/deps . >&2
    rm -f build/wheels/deps/dataspace_connector-*.whl
    echo "$stamp" > build/wheels/deps/pyproject.sha256
fi
rm -rf build/wheels/app
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir build/wheels/app . >&2
find build/wheels -exec touch -h -d @0 {} +
# --network=host: the RUN steps reach the Debian archive the way the host does (no bridge).
podman build --format docker --network=host --layers \
    --build-arg BASE="$BASE" -t "$IMAGE" -f deploy/Containerfile . >&2
echo "$IMAGE"
