#!/usr/bin/env bash
# podman, for Debian 12's podman-compose (1.0.3): it adds "--net PROJECT_default
# --network-alias SERVICE" to every container, even to one with network_mode: host, which podman
# then refuses ("cannot set multiple networks without bridge network mode";
# containers/podman-compose#397, fixed in later releases). On a command that already says
# "--network host" this drops those two options; everything else goes to podman unchanged.
#
#   podman-compose --podman-path deploy/compose/podman-host-network.sh -f deploy/compose.yaml up -d
set -euo pipefail
args=("$@")
if [[ " $* " == *" --network host "* ]]; then
    kept=()
    skip=0
    for arg in "${args[@]}"; do
        if [ "$skip" = 1 ]; then
            skip=0
            continue
        fi
        case "$arg" in
            --net | --network-alias) skip=1 ;;
            *) kept+=("$arg") ;;
        esac
    done
    args=("${kept[@]}")
fi
exec podman "${args[@]}"
