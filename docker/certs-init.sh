#!/bin/sh
# dotkv-certs-init NAME...: makes the cluster CA and one certificate per node
# NAME in DIR (default /certs, or $DOTKV_CERTS_DIR), keeping whatever is already
# there, so it can run at every start of the cluster. Runs inside the dotkv
# image (docker-compose.yml's `certs` service), whose only shell is dash.
set -eu

dir=${DOTKV_CERTS_DIR:-/certs}
if [ "$#" -eq 0 ]; then
  echo "usage: dotkv-certs-init NAME..." >&2
  exit 2
fi

if [ ! -f "$dir/ca.pem" ]; then
  dotkv certs init --out "$dir"
fi
for name in "$@"; do
  if [ ! -f "$dir/$name.pem" ]; then
    # Peers check the certificate against the node's name; the SANs also let a
    # QUIC API client reach the node by its container name or on loopback.
    dotkv certs node --name "$name" --ca-dir "$dir" --out "$dir" \
      --san "$name" --san localhost --san 127.0.0.1
  fi
done
echo "dotkv-certs-init: $dir holds the CA and certificates for: $*"
