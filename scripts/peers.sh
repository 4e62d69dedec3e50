#!/usr/bin/env bash
# Builds the real servers the tests and the demo talk to (see ../shared/PEERS.md) into a cache
# outside the checkout, so that a reused machine skips the builds and a cold one still passes.
#
#   scripts/peers.sh build [NAME...]   build the named peers (default: all) when missing
#   scripts/peers.sh bin               print the cache's bin directory
#   scripts/peers.sh mirror [DIR [LIST]]  print the Debian mirror debootstrap takes from apt's sources
set -euo pipefail

PEERS=${HAAGENT_PEERS:-/tmp/haagent-peers}
BIN=$PEERS/bin
mkdir -p "$BIN"

VERSITYGW_VERSION=v1.8.0
IMDSMOCK_VERSION=v1.13.0
STATICCHECK_VERSION=v0.8.2
FERRETDB_VERSION=v1.24.2
VAULT_VERSION=v1.14.2
S5CMD_VERSION=v2.3.0
BENCHSTAT_VERSION=v0.0.0-20260908200009-22c9c6c9d4da

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
# for the black-hole test, iproute2 and util-linux for network namespaces, ca-certificates for
# update-ca-certificates, systemd-analyze, and the linters for what we ship (shellcheck,
# packer fmt, cloud-init schema).
deps() {
  local missing=()
  [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
  command -v nft >/dev/null || missing+=(nftables)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v unshare >/dev/null || missing+=(util-linux)
  command -v openssl >/dev/null || missing+=(openssl)
  [ -x /usr/sbin/update-ca-certificates ] || missing+=(ca-certificates)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v packer >/dev/null || missing+=(packer)
  command -v cloud-init >/dev/null || missing+=(cloud-init)
  command -v dockerd >/dev/null || missing+=(docker.io)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
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

# FerretDB's module zip has an empty build/version/version.txt and the binary panics at start
# without it: build from a copy of the module with the version written in.
build_ferretdb() {
  [ -x "$BIN/ferretdb" ] && return 0
  log "building FerretDB $FERRETDB_VERSION (cold: ~2 min)"
  local src tmp
  src=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  tmp=$(mktemp -d)
  cp -r "$src/." "$tmp/"
  chmod -R u+w "$tmp"
  echo "$FERRETDB_VERSION" >"$tmp/build/version/version.txt"
  (cd "$tmp" && go build -o "$BIN/ferretdb.tmp" ./cmd/ferretdb)
  mv "$BIN/ferretdb.tmp" "$BIN/ferretdb"
  rm -rf "$tmp"
}

# Vault 1.14.2 (the last MPL-2.0 line) builds as a dependency of a wrapper module, with two
# fixes (../shared/PEERS.md): godebug x509negativeserial=1, and an sdk copy whose start-up
# ExistenceCheck panic is disabled.
build_vault() {
  [ -x "$BIN/vault" ] && return 0
  log "building Vault $VAULT_VERSION (cold: ~10 min, 4 GB at link)"
  local w sdk
  w=$(mktemp -d)
  (
    cd "$w"
    cat >go.mod <<MOD
module haagent/vaultbuild

go 1.26

godebug x509negativeserial=1
MOD
    printf 'package main\n\nimport _ "github.com/hashicorp/vault/api"\n\nfunc main() {}\n' >tools.go
    go get "github.com/hashicorp/vault@$VAULT_VERSION"
    sdk=$(go list -m -json github.com/hashicorp/vault/sdk | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    cp -r "$sdk" ./sdk
    chmod -R u+w ./sdk
    sed -i 's/if p.ExistenceCheck == nil {/if false \&\& p.ExistenceCheck == nil {/' ./sdk/framework/backend.go
    go mod edit -replace github.com/hashicorp/vault/sdk=./sdk
    # Not `go mod tidy`: nothing imports the vault main package, tidy would drop it.
    go build -mod=mod -o "$BIN/vault.tmp" github.com/hashicorp/vault
  )
  mv "$BIN/vault.tmp" "$BIN/vault"
  rm -rf "$w"
}

# Vault 0.7.3, the only version the runbook supports, built by the shared recipe
# (../shared/peers/build-vault07.sh: the Go module proxy's source, cut to `server -dev` with
# transit; skipped when the binary exists). CI runs the repository as a fresh clone with
# shared/ beside it, so the recipe is found relative to this script; a git worktree finds it
# beside its main checkout; HAAGENT_SHARED names any other shared/.
build_vault07() {
  [ -x "$BIN/vault07" ] && return 0
  local recipe common
  recipe=${HAAGENT_SHARED:-$(dirname "$0")/../../shared}/peers/build-vault07.sh
  if [ ! -f "$recipe" ] && [ -z "${HAAGENT_SHARED:-}" ]; then
    common=$(git -C "$(dirname "$0")" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
    [ -n "$common" ] && recipe=$(dirname "$(dirname "$common")")/shared/peers/build-vault07.sh
  fi
  if [ ! -f "$recipe" ]; then
    echo "peers: $recipe not found: check out shared/ beside the repository, or set HAAGENT_SHARED to it" >&2
    return 1
  fi
  log "building Vault 0.7.3 (cold: ~1.5 min)"
  bash "$recipe" "$BIN/vault07"
}

# s5cmd, a baseline of `make bench`: `go install` is refused (no version list), so it builds
# inside a scratch module.
build_s5cmd() {
  [ -x "$BIN/s5cmd" ] && return 0
  log "building s5cmd $S5CMD_VERSION (~40 s)"
  local w
  w=$(mktemp -d)
  (
    cd "$w"
    printf 'module haagent/s5cmdbuild\n\ngo 1.26\n' >go.mod
    go get "github.com/peak/s5cmd/v2@$S5CMD_VERSION"
    go build -o "$BIN/s5cmd.tmp" github.com/peak/s5cmd/v2
  )
  mv "$BIN/s5cmd.tmp" "$BIN/s5cmd"
  rm -rf "$w"
}

# What `make bench` compares against: Debian's awscli (the replaced userdata's tool; /usr/bin/aws,
# since a pip awscli may shadow it) and s5cmd; the watch measurement uses docker.io.
benchdeps() {
  if [ ! -x /usr/bin/aws ]; then
    log "installing awscli"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends awscli >/dev/null
  fi
  build_s5cmd
  if [ ! -x "$BIN/benchstat" ]; then
    log "building benchstat"
    GOBIN=$BIN go install "golang.org/x/perf/cmd/benchstat@$BENCHSTAT_VERSION"
  fi
}

# debian_mirror [SOURCES_DIR [SOURCES_LIST]] prints the first Debian mirror of the machine's apt
# sources (an http(s) URI whose path ends in /debian, without a trailing slash), or nothing.
# Any suite will do: a Debian mirror carries bookworm whatever this machine runs. deb822 files
# (*.sources): a stanza whose Types has deb and that is not Enabled: no, its URIs possibly
# several on a line or continued on the next; one-line files (sources.list, *.list):
# `deb [options] URI suite...`, the options skipped. mirror+ and cdrom: URIs are not for
# debootstrap and are passed over.
debian_mirror() {
  local dir=${1:-/etc/apt/sources.list.d} list=${2:-/etc/apt/sources.list} m=""
  local -a deb822=() oneline=()
  shopt -s nullglob
  deb822=("$dir"/*.sources)
  oneline=("$dir"/*.list)
  shopt -u nullglob
  [ -f "$list" ] && oneline=("$list" "${oneline[@]}")
  if [ ${#deb822[@]} -gt 0 ]; then
    m=$(awk '
      function flush(  n, i, u) {
        if (types ~ /(^| )deb( |$)/ && enabled != "no") {
          n = split(uris, u, " ")
          for (i = 1; i <= n; i++) if (u[i] ~ /^https?:\/\/.*\/debian\/?$/) { sub(/\/$/, "", u[i]); print u[i]; found = 1; exit }
        }
        types = uris = enabled = field = ""
      }
      FNR == 1 && NR != 1 { flush() }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "types") types = types " " $0; next }
      {
        field = tolower($1); sub(/:$/, "", field); $1 = ""
        if (field == "types") types = $0
        else if (field == "uris") uris = $0
        else if (field == "enabled") enabled = tolower($2)
      }
      END { if (!found) flush() }
    ' "${deb822[@]}")
  fi
  if [ -z "$m" ] && [ ${#oneline[@]} -gt 0 ]; then
    m=$(awk '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($i ~ /^https?:\/\/.*\/debian\/?$/) { u = $i; sub(/\/$/, "", u); print u; exit }
      }
    ' "${oneline[@]}")
  fi
  printf '%s' "$m"
}

# A debootstrapped bookworm with systemd and docker.io, booted by systemd-nspawn in the boot
# test; cached (read-only use: the test copies it).
build_nspawnroot() {
  [ -x "$PEERS/nspawn/root/lib/systemd/systemd" ] && return 0
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap systemd-container >/dev/null
  command -v systemd-nspawn >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container >/dev/null
  local mirror
  mirror=$(debian_mirror)
  if [ -z "$mirror" ]; then
    echo "peers: no Debian mirror found in /etc/apt/sources.list.d/*.sources, /etc/apt/sources.list.d/*.list or /etc/apt/sources.list;" >&2
    echo "peers: the boot test's debootstrap takes the machine's own mirror: add one to the apt sources (see sources.list(5))" >&2
    return 1
  fi
  log "debootstrapping bookworm for the boot test from $mirror (~1.5 min)"
  mkdir -p "$PEERS/nspawn"
  rm -rf "$PEERS/nspawn/root.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,docker.io,ca-certificates bookworm "$PEERS/nspawn/root.tmp" "$mirror" >/dev/null
  mkdir -p "$PEERS/nspawn/root.tmp/var/log/journal"
  mv "$PEERS/nspawn/root.tmp" "$PEERS/nspawn/root"
}

cmd=${1:-build}
shift || true
case $cmd in
  bin) echo "$BIN" ;;
  mirror) debian_mirror "$@"; echo ;;
  deps) deps ;;
  benchdeps) benchdeps ;;
  build)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && names=(versitygw imdsmock staticcheck ferretdb vault vault07 nspawnroot)
    for n in "${names[@]}"; do "build_$n"; done
    ;;
  *) echo "usage: $0 build [versitygw|imdsmock|staticcheck|ferretdb|vault|vault07|nspawnroot|s5cmd...] | deps | benchdeps | bin | mirror [SOURCES_DIR [SOURCES_LIST]]" >&2; exit 2 ;;
esac
