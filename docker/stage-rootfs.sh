#!/usr/bin/env bash
# Stages the build context of the dotkv image: a whole root filesystem, because
# the image is built FROM scratch (this machine's Docker Engine cannot pull a
# base image). It holds the release binaries with their debug info stripped, the
# shared libraries they link and the dynamic loader (found with ldd), libfaketime
# for clock-skew tests, CA certificates, a non-root user, a POSIX shell (dash,
# only for the first-start certificate script) and that script.
#
# Usage: docker/stage-rootfs.sh BIN_DIR OUT_DIR
#   BIN_DIR  where `cargo build --release` put dotkv and dotkv-relay
#   OUT_DIR  the build context to (re)create: OUT_DIR/Dockerfile, OUT_DIR/rootfs/
#            (owned by root in the image) and OUT_DIR/owned/ (owned by the
#            dotkv user: the data and certificate directories)
set -euo pipefail

bin_dir=${1:?usage: docker/stage-rootfs.sh BIN_DIR OUT_DIR}
out=${2:?usage: docker/stage-rootfs.sh BIN_DIR OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)

# The user the node runs as. A fixed, unusual id, so files in volumes do not
# belong to some user of the host by accident.
uid=10001

fail() { echo "stage-rootfs: $*" >&2; exit 1; }

for tool in ldd objcopy; do
  command -v "$tool" >/dev/null || fail "needs $tool (Debian: binutils, libc-bin)"
done
for bin in dotkv dotkv-relay; do
  [ -x "$bin_dir/$bin" ] || fail "$bin_dir/$bin is missing; run 'make build' first"
done
faketime_dir=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/faketime
[ -f "$faketime_dir/libfaketime.so.1" ] ||
  fail "$faketime_dir/libfaketime.so.1 is missing; run 'make deps' (Debian package libfaketime)"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || fail "$ca_bundle is missing (Debian package ca-certificates)"
shell=$(readlink -f /bin/dash 2>/dev/null || true)
[ -x "$shell" ] || fail "/bin/dash is missing (Debian package dash)"

rm -rf "$out"
root=$out/rootfs
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/ssl/certs" "$root/etc/dotkv" \
  "$root/tmp" "$root$faketime_dir" "$out/owned/data" "$out/owned/certs"
chmod 1777 "$root/tmp"
chmod 0700 "$out/owned/certs"

# Binaries. The release profile keeps full debug info (about 500 MB for dotkv);
# the image keeps only the symbols, enough for readable backtraces.
for bin in dotkv dotkv-relay; do
  objcopy --strip-debug "$bin_dir/$bin" "$root/usr/local/bin/$bin"
done
cp "$shell" "$root/bin/sh"
install -m 0755 "$here/certs-init.sh" "$root/usr/local/bin/dotkv-certs-init"
cp "$faketime_dir"/libfaketime*.so.1 "$root$faketime_dir/"

# Every shared library the ELF files above need, at the path the loader looks
# for it, and the loader itself.
elves=("$root/usr/local/bin/dotkv" "$root/usr/local/bin/dotkv-relay" "$root/bin/sh"
  "$root$faketime_dir"/libfaketime*.so.1)
libs=$(
  for elf in "${elves[@]}"; do
    ldd "$elf" | awk -v elf="$elf" '
      /not found/ { print "stage-rootfs: " elf ": " $1 " not found" > "/dev/stderr"; exit 1 }
      $2 == "=>" && $3 ~ /^\// { print $3; next }
      $1 ~ /^\// { print $1 }'
  done | sort -u
)
[ -n "$libs" ] || fail "ldd found no libraries"
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
dotkv:x:$uid:$uid:dotkv:/data:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
dotkv:x:$uid:
EOF
# glibc's resolver reads /etc/hosts, then DNS (Docker's embedded DNS resolves
# service names).
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"

cp "$here/Dockerfile" "$out/Dockerfile"
echo "stage-rootfs: $(du -sh "$out" | cut -f1) staged in $out ($(echo "$libs" | wc -l) libraries)"
