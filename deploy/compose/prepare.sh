#!/usr/bin/env bash
# Prepare a participant folder (made by `connector init`) for deploy/compose.yaml: its state in
# the compose file's PostgreSQL, served by two replicas on ports of their own. Run as root
# (it gives the folder to the containers' users); running it again changes nothing.
#
#   deploy/compose/prepare.sh participant
#
# Writes, when absent (0600):
#   keys/postgres.password   the database password (owned by uid 999, PostgreSQL's container)
#   keys/db.dsn              postgresql://connector:PASSWORD@127.0.0.1:5432/connector
#   keys/data-token.secret   made here, so the replicas share it (each would make its own
#                            on a first start)
# adds [storage] postgres_dsn_file = "keys/db.dsn" to connector.toml, and [health] drain_s = 5
# when it has no [health] table; writes replicas/N.toml: connector.toml with replica N's
# ports (DSP 127.0.0.1:846N, management 847N, metrics 127.0.0.1:946(4+N)), the files compose
# mounts over each replica's connector.toml. Edit connector.toml, then run this again.
set -euo pipefail
dir=${1:?usage: prepare.sh PARTICIPANT_DIR}
config=$dir/connector.toml
keys=$dir/keys
if [ ! -f "$config" ] || [ ! -d "$keys" ]; then
    echo "prepare.sh: $dir is not a participant folder (run connector init first)" >&2
    exit 2
fi
REPLICAS=${REPLICAS:-2}

umask 077
if [ ! -s "$keys/postgres.password" ]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$keys/postgres.password"
fi
if [ ! -s "$keys/db.dsn" ]; then
    printf 'postgresql://connector:%s@127.0.0.1:5432/connector\n' \
        "$(cat "$keys/postgres.password")" > "$keys/db.dsn"
fi
if [ ! -s "$keys/data-token.secret" ]; then
    head -c 32 /dev/urandom > "$keys/data-token.secret"
fi
chmod 700 "$keys"
chmod 600 "$keys"/*

umask 022
if ! grep -q '^postgres_dsn_file *=' "$config"; then
    if grep -q '^\[storage\]' "$config"; then
        sed -i 's/^\[storage\].*/&\npostgres_dsn_file = "keys\/db.dsn"/' "$config"
    else
        printf '\n[storage]\npostgres_dsn_file = "keys/db.dsn"\n' >> "$config"
    fi
fi
if ! grep -q '^\[health\]' "$config"; then
    printf '\n[health]\ndrain_s = 5\n' >> "$config"
fi

# replica N: connector.toml with [server] host and port, [management] port and [metrics]
# listen replaced (or added), everything else as it is.
mkdir -p "$dir/replicas"
for n in $(seq 1 "$REPLICAS"); do
    awk -v dsp=$((8460 + n)) -v mgmt=$((8470 + n)) -v metrics="127.0.0.1:$((9464 + n))" '
        function close_table() {
            if (table == "metrics" && !listen) { print "listen = \"" metrics "\""; listen = 1 }
        }
        /^[ \t]*\[/ {
            close_table()
            table = $0; sub(/#.*/, "", table); gsub(/\[|\]|[ \t]/, "", table)
            if (table == "metrics") has_metrics = 1
        }
        table == "server" && /^[ \t]*host[ \t]*=/ { print "host = \"127.0.0.1\""; next }
        table == "server" && /^[ \t]*port[ \t]*=/ { print "port = " dsp; next }
        table == "management" && /^[ \t]*port[ \t]*=/ { print "port = " mgmt; next }
        table == "metrics" && /^[ \t]*(listen|enabled)[ \t]*=/ {
            if (!listen) print "listen = \"" metrics "\""
            listen = 1; next
        }
        { print }
        END {
            close_table()
            if (!has_metrics) printf "\n[metrics]\nlisten = \"%s\"\n", metrics
        }' "$config" > "$dir/replicas/$n.toml"
done

if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 "$dir"
    chown 999:999 "$keys/postgres.password"
else
    echo "prepare.sh: not root, so $dir keeps its owner: the containers need" \
         "chown -R 10001:10001 $dir && chown 999:999 $keys/postgres.password" >&2
fi
echo "prepared $dir for deploy/compose.yaml: $REPLICAS replicas (replicas/*.toml), state in PostgreSQL"
