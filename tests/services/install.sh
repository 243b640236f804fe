#!/usr/bin/env bash
# The real services the fleet and console tests start for themselves: etcd (the cluster's store), dockerd
# (a two-node Docker Swarm on loopback) and chromium (the console's browser, driven by Playwright). Debian
# packages; installed once, when missing (as root). Nothing is started here: each test starts and stops its own.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v dockerd >/dev/null || need+=(docker.io)
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps docker.io from pulling in a started service and its extras
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's docker.io must not run as a system service beside the tests' own daemons.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
  systemctl stop docker docker.socket || true
fi
etcd --version  # its whole output: `| head -1` can end it with SIGPIPE, which pipefail makes a failure
dockerd --version
chromium --version
