#!/usr/bin/env bash
# Installs the system packages dotkv's build and tests need, only when missing.
# RocksDB's bindings need libclang (bindgen) and a C++ compiler. The fault-injection
# harness (jepsen/) needs iproute2 (network namespaces) and libfaketime (clock skew).
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in libclang-dev clang g++ make pkg-config ccache faketime libfaketime iproute2; do
  have_pkg "$pkg" || need+=("$pkg")
done
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is not on PATH; install a stable Rust toolchain first" >&2
  exit 1
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
