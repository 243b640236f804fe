#!/bin/bash
# Stop the two podman API services that tests/engine/start.sh started, after removing
# all their containers. Safe to run when they are not running.
#
#   tests/engine/stop.sh           # keep storage (the next start.sh skips the image import)
#   tests/engine/stop.sh --purge   # also delete $GATEWAY_TEST_ENGINE_DIR (default /tmp/llm-gateway-engines)
set -euo pipefail

D="${GATEWAY_TEST_ENGINE_DIR:-/tmp/llm-gateway-engines}"
ENGINES="e1 e2"
purge=0
[ "${1:-}" = "--purge" ] && purge=1

log() { echo "stop.sh: $*" >&2; }

pod() {
    local e="$1"; shift
    podman --root "$D/$e/root" --runroot "$D/$e/run" --tmpdir "$D/$e/tmp" \
        --network-config-dir "$D/$e/networks" "$@"
}

service_pids() {  # the podman service processes serving $D/$1.sock
    local e="$1" pid
    if [ -f "$D/$e.pid" ]; then
        pid="$(cat "$D/$e.pid")"
        if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -Fq "unix://$D/$e.sock"; then
            echo "$pid"
            return
        fi
    fi
    # no usable pid file: look for the service by its exact socket argument
    for p in /proc/[0-9]*; do
        tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -Fq "system service --time=0 unix://$D/$e.sock " \
            && echo "${p#/proc/}"
    done
    return 0
}

for e in $ENGINES; do
    [ -d "$D/$e" ] || continue
    if command -v podman >/dev/null 2>&1; then
        pod "$e" rm --all --force --time 2 >/dev/null 2>&1 || log "could not remove containers of $e"
    fi
    for pid in $(service_pids "$e"); do
        log "stopping $e (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$D/$e.pid" "$D/$e.sock"
done

if [ "$purge" = 1 ]; then
    for e in $ENGINES; do
        # overlay mounts must go before the files can be deleted
        [ -d "$D/$e" ] && { pod "$e" system reset --force >/dev/null 2>&1 || true; }
    done
    rm -rf "$D"
    log "removed $D"
fi
