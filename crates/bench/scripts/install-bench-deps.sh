#!/usr/bin/env bash
# Installs what `make bench` needs beyond the build, only when missing:
# Debian's redis-server (the peer dotkv is measured against) and redis-tools
# (redis-benchmark, the independent cross-check). Kept apart from
# scripts/install-deps.sh so that `make build` and `make test` never need Redis.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v redis-server >/dev/null 2>&1 || have_pkg redis-server || need+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || have_pkg redis-tools || need+=(redis-tools)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-bench-deps: please install ${need[*]} (Debian/Ubuntu packages); no apt-get here" >&2
  exit 1
fi
echo "install-bench-deps: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-bench-deps: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The package would start a system-wide Redis on port 6379 where services can
# start; the benchmark starts its own on a free port and does not use it.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
