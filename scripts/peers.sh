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

cmd=${1:-build}
shift || true
case $cmd in
  bin) echo "$BIN" ;;
  build)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && names=(versitygw imdsmock staticcheck)
    for n in "${names[@]}"; do "build_$n"; done
    ;;
  *) echo "usage: $0 build [versitygw|imdsmock|staticcheck...] | bin" >&2; exit 2 ;;
esac
