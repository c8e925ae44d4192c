#!/usr/bin/env bash
# The images deploy/compose.yaml uses besides the connector's, built FROM a Debian base with
# Debian's packages, for machines that reach no image registry (elsewhere compose pulls the
# official images). Prints the environment compose reads, e.g.
#
#   eval "$(deploy/compose/images.sh)" && podman-compose -f deploy/compose.yaml up -d
#
#   BASE  base image (default localhost/debian-min:bookworm, made by deploy/base-image.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BASE=${BASE:-localhost/debian-min:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/../podman/containers.conf}
if [ "$BASE" = localhost/debian-min:bookworm ]; then
    "$here/../base-image.sh" "$BASE"
fi
for service in postgres haproxy prometheus; do
    image=localhost/$service:bookworm
    # --network=host: the RUN steps reach the Debian archive the way the host does.
    podman build --format docker --network=host --layers --build-arg BASE="$BASE" \
        -t "$image" -f "$here/$service.Containerfile" "$here" >&2
    echo "export ${service^^}_IMAGE=$image"
done
