#!/usr/bin/env bash
# Cuts a datacenter of the Compose cluster off from the others, and heals it,
# by stopping and starting the WAN relays (docker-compose.yml): every link
# between datacenters goes through a relay, so with the relays to and from a
# datacenter stopped, its nodes still serve and replicate among themselves but
# neither send to nor hear from the other datacenters.
#
# Usage: docker/wan.sh partition N    cut datacenter dcN off (N = 1, 2 or 3)
#        docker/wan.sh heal           start every relay again
#        docker/wan.sh status         list the relays and their state
#
# Acts on the Compose project of the repository's docker-compose.yml, or the
# one COMPOSE_PROJECT_NAME names. COMPOSE may name the Compose command
# (default: `docker compose` if present, else `docker-compose`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
compose+=(-f "$root/docker-compose.yml")

relays() { "${compose[@]}" config --services | grep '^wan-' || true; }

case "${1:-}" in
  partition)
    dc=dc${2:?usage: docker/wan.sh partition N (the datacenter: 1, 2 or 3)}
    # wan-A-to-dcB-nK: the link from datacenter A to a node of datacenter B.
    mapfile -t cut < <(relays | grep -E "^wan-$dc-to-|^wan-dc[0-9]+-to-$dc-")
    [ ${#cut[@]} -gt 0 ] || { echo "wan: no relays serve $dc" >&2; exit 1; }
    "${compose[@]}" stop -t 2 "${cut[@]}"
    echo "wan: $dc is cut off (${#cut[@]} relays stopped); 'docker/wan.sh heal' or 'make heal' reconnects it"
    ;;
  heal)
    mapfile -t all < <(relays)
    "${compose[@]}" start "${all[@]}"
    echo "wan: every relay runs; the datacenters reconnect within a few seconds"
    ;;
  status)
    mapfile -t all < <(relays)
    "${compose[@]}" ps "${all[@]}"
    ;;
  *)
    sed -n '8,10s/^# //p' "$0" >&2
    exit 2
    ;;
esac
