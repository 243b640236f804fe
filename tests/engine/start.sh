#!/bin/bash
# Start two real Docker-Engine-API services (podman) that the tests use as two "hosts".
#
# Run as root. Idempotent: re-running while the services run changes nothing and prints
# the same GATEWAY_TEST_ENGINES line. Stop them with tests/engine/stop.sh.
#
#   tests/engine/start.sh            # D=/tmp/llm-gateway-engines
#   GATEWAY_TEST_ENGINE_DIR=/x tests/engine/start.sh
#   eval "$(tests/engine/start.sh | grep '^GATEWAY_TEST_ENGINES=')"; export GATEWAY_TEST_ENGINES
#
# What it does:
#  1. apt-get installs podman and runc if they are missing (and prometheus, for the metrics tests).
#  2. Registers tests/engine/runc-no-rlimits as podman's default OCI runtime in
#     /etc/containers/containers.conf (merged into an existing file; a backup is kept as
#     containers.conf.llm-gateway.bak). Machines without CAP_SYS_RESOURCE cannot apply the
#     rlimits that podman always writes into config.json; the wrapper deletes them.
#  3. Starts `podman system service` twice, each with its own storage, libpod tmpdir and
#     socket: $D/e1.sock and $D/e2.sock (logs in $D/e1.log, $D/e2.log). They outlive this
#     script. Each engine also gets its own default network (--network-config-dir
#     $D/eN/networks holding podman.json): bridge llmgw-e1 with 10.90.1.0/24 and bridge
#     llmgw-e2 with 10.90.2.0/24 (override with GATEWAY_TEST_ENGINE_SUBNET_PREFIX, default
#     10.90). Sharing the host's default "podman" bridge does not work: when one engine
#     removes its last container it tears the shared bridge and its NAT rules down under
#     the other engine's containers.
#  4. Imports into each engine's storage an image localhost/llm-gateway-llamacpp:test made
#     of empty directories only (usr tmp etc proc sys dev app; bin, lib, lib64 are symlinks
#     into usr). Its entrypoint is /app/llama-server, as in llama.cpp's official server
#     image, and it sets LD_LIBRARY_PATH=/app, PATH=/app:... and WORKDIR /app.
#  Waits up to GATEWAY_TEST_ENGINE_START_TIMEOUT seconds (default 30) for each /_ping.
#
# Running llama.cpp in that image: the container needs these read-only bind mounts
#     host /usr                      -> /usr    (libc, libstdc++, libgomp, ...)
#     host <llama.cpp build>/bin     -> /app    (llama-server, ggml-rpc-server, lib*.so)
#     host <model directory>         -> any path, passed with -m
# The build's binaries carry an absolute RUNPATH into the build tree
# (e.g. /root/.cache/llm-gateway/llama.cpp-11434.0.0/build/bin); it is absent in the
# container, and the image's LD_LIBRARY_PATH=/app finds the same shared libraries in /app
# instead, so no mount at the build tree's own path is needed.
#
# Networking between the two "hosts" (llama.cpp RPC): publish a worker's port on all
# interfaces (Docker SDK: ports={"50052/tcp": None}) or on the host's own address, and
# reach it from a container on the other engine at the host's address (eth0, e.g.
# 192.0.2.2) and the published port. Podman 4.3 mishandles an explicit HostIp "0.0.0.0"
# (its DNAT rule then matches only destination 0.0.0.0, so nothing reaches the port);
# leave the host IP empty instead. A port published on 127.0.0.1 is reachable from the
# host only, not from other containers. Seen from inside a container, connections to its
# published port come from: the bridge gateway (10.90.N.1) when the client is the host via
# 127.0.0.1 or a container on the same engine; the host's own address when the host
# connects to that address; the client container's own address (10.90.M.x) when the
# client is a container on the other engine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
D="${GATEWAY_TEST_ENGINE_DIR:-/tmp/llm-gateway-engines}"
IMAGE="localhost/llm-gateway-llamacpp:test"
RUNTIME_NAME="runc-no-rlimits"
WRAPPER="$HERE/runc-no-rlimits"
CONF="/etc/containers/containers.conf"
ENGINES="e1 e2"
DEADLINE_S="${GATEWAY_TEST_ENGINE_START_TIMEOUT:-30}"

log() { echo "start.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root"
    exit 1
fi

# --- 1. packages -------------------------------------------------------------------
need=""
command -v podman >/dev/null 2>&1 || need="podman runc"
if [ -z "$need" ] && ! command -v runc >/dev/null 2>&1 && [ ! -x /usr/sbin/runc ]; then
    need="runc"
fi
command -v curl >/dev/null 2>&1 || need="$need curl"
# Not an engine, but the other real part the tests need from Debian: Prometheus (and its promtool).
command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/prometheus ] || need="$need prometheus"
if [ -n "$need" ]; then
    log "installing $need"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y $need >&2; then
        apt-get update >&2
        apt-get install -y $need >&2
    fi
fi
for tool in podman curl promtool; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool not found"; exit 1; }
done

# --- 2. OCI runtime wrapper -----------------------------------------------------------
[ -x "$WRAPPER" ] || chmod +x "$WRAPPER"

PY=""
for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null 2>&1; then PY="$p"; break; fi
done

mkdir -p "$(dirname "$CONF")"
conf_changed=0
if [ ! -e "$CONF" ]; then
    conf_changed=1
    log "writing $CONF"
    cat > "$CONF" <<EOF
# Written by llm-gateway tests/engine/start.sh
[engine]
runtime = "$RUNTIME_NAME"

[engine.runtimes]
$RUNTIME_NAME = ["$WRAPPER"]
EOF
elif ! grep -Eq "^[[:space:]]*runtime[[:space:]]*=[[:space:]]*\"$RUNTIME_NAME\"" "$CONF" \
    || ! grep -Fq "$RUNTIME_NAME = [\"$WRAPPER\"]" "$CONF"; then
    [ -n "$PY" ] || { log "python3 is needed to merge into an existing $CONF"; exit 1; }
    conf_changed=1
    log "merging runtime $RUNTIME_NAME into $CONF"
    [ -e "$CONF.llm-gateway.bak" ] || cp -p "$CONF" "$CONF.llm-gateway.bak"
    "$PY" - "$CONF" "$RUNTIME_NAME" "$WRAPPER" <<'PY'
import re, sys
path, name, wrapper = sys.argv[1:4]
lines = open(path).read().splitlines()
header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")

def section_of(i):
    """Name of the table that line i belongs to ('' for the top level)."""
    for j in range(i, -1, -1):
        m = header.match(lines[j])
        if m:
            return m.group(1)
    return ""

def find_header(name_):
    for i, l in enumerate(lines):
        m = header.match(l)
        if m and m.group(1) == name_:
            return i
    return None

# [engine.runtimes]: drop any earlier definition of our runtime, then add ours.
entry = '%s = ["%s"]' % (name, wrapper)
key = re.compile(r"^\s*%s\s*=" % re.escape(name))
for i in range(len(lines) - 1, -1, -1):
    if key.match(lines[i]) and section_of(i) == "engine.runtimes":
        # a multi-line array would continue up to its closing bracket
        j = i
        while "]" not in lines[j] and j + 1 < len(lines):
            j += 1
        del lines[i:j + 1]
h = find_header("engine.runtimes")
if h is None:
    lines += ["", "[engine.runtimes]", entry]
else:
    lines.insert(h + 1, entry)

# [engine] runtime = "<name>": replace an existing key, or add one.
rt = re.compile(r"^\s*runtime\s*=")
done = False
for i, l in enumerate(lines):
    if rt.match(l) and section_of(i) == "engine":
        lines[i] = 'runtime = "%s"  # set by llm-gateway tests/engine/start.sh' % name
        done = True
        break
if not done:
    h = find_header("engine")
    if h is None:
        lines += ["", "[engine]", 'runtime = "%s"' % name]
    else:
        lines.insert(h + 1, 'runtime = "%s"' % name)

text = "\n".join(lines) + "\n"
try:
    import tomllib
    tomllib.loads(text)
except ImportError:
    pass
open(path, "w").write(text)
PY
fi

# --- 3. the two API services ----------------------------------------------------------
engine_opts() {  # global podman options that select engine $1's storage and network
    echo --root "$D/$1/root" --runroot "$D/$1/run" --tmpdir "$D/$1/tmp" \
        --network-config-dir "$D/$1/networks"
}
pod() {  # pod ENGINE ARGS...: podman CLI on that engine
    local e="$1"; shift
    # shellcheck disable=SC2046  # $D must not contain spaces
    podman $(engine_opts "$e") "$@"
}

write_network() {  # the engine's default network "podman": its own bridge and subnet
    local e="$1" n="${1#e}" f="$D/$1/networks/podman.json"
    local net="${GATEWAY_TEST_ENGINE_SUBNET_PREFIX:-10.90}.$n"
    [ -f "$f" ] && return 0
    mkdir -p "$D/$e/networks"
    cat > "$f.tmp" <<EOF
{
     "name": "podman",
     "id": "$(printf '%064x' "$((0x11a9e7a + n))")",
     "driver": "bridge",
     "network_interface": "llmgw-$e",
     "created": "2026-01-01T00:00:00Z",
     "subnets": [{"subnet": "$net.0/24", "gateway": "$net.1"}],
     "ipv6_enabled": false,
     "internal": false,
     "dns_enabled": false,
     "ipam_options": {"driver": "host-local"}
}
EOF
    mv "$f.tmp" "$f"
}

ping_ok() {
    curl -sf -m 2 --unix-socket "$D/$1.sock" http://d/_ping >/dev/null 2>&1
}

mkdir -p "$D"
for e in $ENGINES; do
    if ping_ok "$e"; then
        log "$e already answers on $D/$e.sock"
        if [ "$conf_changed" = 1 ]; then
            log "WARNING: $CONF changed after $e started; run tests/engine/stop.sh and start.sh again"
        fi
        continue
    fi
    mkdir -p "$D/$e/root" "$D/$e/run" "$D/$e/tmp"
    write_network "$e"
    rm -f "$D/$e.sock"
    log "starting $e on $D/$e.sock (log $D/$e.log)"
    # shellcheck disable=SC2046
    setsid nohup podman $(engine_opts "$e") \
        system service --time=0 "unix://$D/$e.sock" >>"$D/$e.log" 2>&1 </dev/null &
    echo $! > "$D/$e.pid"
done

for e in $ENGINES; do
    end=$(( $(date +%s) + DEADLINE_S ))
    until ping_ok "$e"; do
        if [ "$(date +%s)" -ge "$end" ]; then
            log "$e did not answer /_ping on $D/$e.sock within ${DEADLINE_S}s; tail of $D/$e.log:"
            tail -n 20 "$D/$e.log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    # under sudo, hand the socket to the calling user so that unprivileged tests can use it
    if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then
        chown "$SUDO_UID" "$D/$e.sock"
    fi
done

# --- 4. the image -----------------------------------------------------------------------
tarball=""
for e in $ENGINES; do
    if pod "$e" image exists "$IMAGE"; then
        continue
    fi
    if [ -z "$tarball" ]; then
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        mkdir -p "$tmp/root"
        (cd "$tmp/root" && mkdir usr tmp etc proc sys dev app && chmod 1777 tmp \
            && ln -s usr/bin bin && ln -s usr/lib lib && ln -s usr/lib64 lib64)
        tarball="$tmp/image.tar"
        tar -C "$tmp/root" --owner=0 --group=0 --mtime=@0 -cf "$tarball" .
    fi
    log "importing $IMAGE into $e"
    pod "$e" import -q \
        --change 'ENTRYPOINT ["/app/llama-server"]' \
        --change 'ENV LD_LIBRARY_PATH=/app' \
        --change 'ENV PATH=/app:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'WORKDIR /app' \
        "$tarball" "$IMAGE" >/dev/null
done

# podman 4.3's netavark tears an engine's bridge down when its last container goes, and a container created
# at that moment fails with "iptables: Chain already exists". One container that never exits keeps the
# bridge up. It carries no llm-gateway label, so the gateway never touches it (the tests check that rule).
for e in $ENGINES; do
    if ! pod "$e" container exists llmgw-anchor; then
        pod "$e" create --name llmgw-anchor -v /usr:/usr:ro --entrypoint /usr/bin/sleep "$IMAGE" infinity >/dev/null
    fi
    pod "$e" start llmgw-anchor >/dev/null
done

urls=""
for e in $ENGINES; do
    urls="${urls:+$urls,}unix://$D/$e.sock"
done
echo "GATEWAY_TEST_ENGINES=$urls"
echo "GATEWAY_TEST_ENGINE_IMAGE=$IMAGE"
