#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests, run as an unprivileged user
# in a temporary directory, reached only through a UNIX socket there.
#
#   .ci/postgres.sh start DIR   creates and starts it; prints its URL
#   .ci/postgres.sh stop DIR    stops it and deletes DIR
#
# Installs Debian's postgresql package first if no initdb can be found.
set -euo pipefail

find_bin() {
    local name=$1 candidate
    for candidate in "$(command -v "$name" 2>/dev/null || true)" /usr/lib/postgresql/*/bin/"$name"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# The server refuses to run as root; "nobody" exists everywhere.
run_as() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u nobody -- "$@"
    else
        "$@"
    fi
}

start() {
    local dir=$1
    if ! find_bin initdb >/dev/null; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        fi
    fi
    local initdb pg_ctl
    initdb=$(find_bin initdb) || { echo "no initdb: cannot start PostgreSQL" >&2; return 1; }
    pg_ctl=$(find_bin pg_ctl)
    mkdir -p "$dir"
    chmod 0755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown nobody "$dir"; fi
    # Trust is safe here: the only way in is the socket in this directory.
    run_as "$initdb" -D "$dir/data" -U nymprov --auth=trust --encoding=UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    run_as "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c max_connections=200 -c fsync=on" \
        start >&2 || { cat "$dir/server.log" >&2; return 1; }
    echo "postgresql://nymprov@/postgres?host=$dir"
}

stop() {
    local dir=$1
    local pg_ctl
    pg_ctl=$(find_bin pg_ctl) || return 0
    if [ -d "$dir/data" ]; then
        run_as "$pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
