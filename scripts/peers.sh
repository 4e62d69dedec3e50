#!/usr/bin/env bash
# Builds the real servers the tests and the demo talk to (see ../shared/PEERS.md) into a cache
# outside the checkout, so that a reused machine skips the builds and a cold one still passes.
#
#   scripts/peers.sh build [NAME...]   build the named peers (default: all) when missing
#   scripts/peers.sh bin               print the cache's bin directory
set -euo pipefail

PEERS=${HAAGENT_PEERS:-/tmp/haagent-peers}
BIN=$PEERS/bin
mkdir -p "$BIN"

VERSITYGW_VERSION=v1.8.0
IMDSMOCK_VERSION=v1.13.0
STATICCHECK_VERSION=v0.8.2

log() { printf 'peers: %s\n' "$*" >&2; }

build_versitygw() {
  [ -x "$BIN/versitygw" ] && return 0
  log "building versitygw $VERSITYGW_VERSION (cold: ~2.5 min)"
  GOBIN=$BIN go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
}

build_imdsmock() {
  [ -x "$BIN/ec2-metadata-mock" ] && return 0
  log "building amazon-ec2-metadata-mock $IMDSMOCK_VERSION"
  GOBIN=$BIN go install "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$IMDSMOCK_VERSION"
}

build_staticcheck() {
  [ -x "$BIN/staticcheck" ] && return 0
  log "building staticcheck $STATICCHECK_VERSION"
  GOBIN=$BIN go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
}

# Debian packages the tests and the demo use: PostgreSQL 15 (usually preinstalled), nftables
# for the black-hole test, iproute2 and util-linux for network namespaces.
deps() {
  local missing=()
  [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
  command -v nft >/dev/null || missing+=(nftables)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v unshare >/dev/null || missing+=(util-linux)
  command -v openssl >/dev/null || missing+=(openssl)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "peers: need root to apt-get install ${missing[*]}" >&2; return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's package starts a cluster of its own; the tests run their own clusters.
  if [[ " ${missing[*]} " == *" postgresql-15 "* ]]; then
    pg_ctlcluster 15 main stop 2>/dev/null || true
  fi
}

cmd=${1:-build}
shift || true
case $cmd in
  bin) echo "$BIN" ;;
  deps) deps ;;
  build)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && names=(versitygw imdsmock staticcheck)
    for n in "${names[@]}"; do "build_$n"; done
    ;;
  *) echo "usage: $0 build [versitygw|imdsmock|staticcheck...] | deps | bin" >&2; exit 2 ;;
esac
