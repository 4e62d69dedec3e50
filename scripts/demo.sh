#!/usr/bin/env bash
# make demo: a whole boot on a local, self-contained setup. Starts versitygw (a real S3 server)
# and the EC2 metadata mock in IMDSv2-only mode on loopback, seeds a bucket from
# examples/bucket/, runs `haagent run --once --root <tmp>` against them, and shows the run and
# the resulting tree with modes.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(scripts/peers.sh bin)
scripts/peers.sh build versitygw imdsmock ferretdb vault
mkdir -p bin
go build -o bin/haagent ./cmd/haagent

scripts/peers.sh deps
WORK=$(mktemp -d /tmp/haagent-demo.XXXXXX)
chmod 755 "$WORK"
pids=()
cleanup() {
  if [ -n "${PGDATA:-}" ]; then
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitport() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: nothing listens on 127.0.0.1:$1" >&2; return 1
}

# S3: a bucket is a directory, an object a file.
S3PORT=$(freeport)
mkdir -p "$WORK/s3/circleci-ha" "$WORK/iam"
cp -r examples/bucket/. "$WORK/s3/circleci-ha/"
ROOT_ACCESS_KEY=demo-access ROOT_SECRET_KEY=demo-secret-key \
  "$BIN/versitygw" --port "127.0.0.1:$S3PORT" --iam-dir "$WORK/iam" posix "$WORK/s3" >"$WORK/versitygw.log" 2>&1 &
pids+=($!)

# IMDS: IMDSv2 only, serving the instance identity.
IMDSPORT=$(freeport)
mkdir -p "$WORK/imds"
cat >"$WORK/imds/config.json" <<JSON
{"metadata":{"values":{"instance-id":"i-0demo1234567890","local-ipv4":"10.0.1.23"}},
 "dynamic":{"values":{"instance-identity-document":{"instanceId":"i-0demo1234567890","region":"us-east-1","privateIp":"10.0.1.23","availabilityZone":"us-east-1a"}}}}
JSON
(cd "$WORK/imds" && HOME="$WORK/imds" exec "$BIN/ec2-metadata-mock" -n 127.0.0.1 -p "$IMDSPORT" -I \
  -c "$WORK/imds/config.json" --asg-termination-delay-sec 86400 >"$WORK/imds.log" 2>&1) &
pids+=($!)
waitport "$S3PORT"; waitport "$IMDSPORT"

# PostgreSQL: the eight databases of CircleCI's HA page, each with uuid-ossp (circle with pgcrypto
# too), TLS with a demo CA.
PGPORT=$(freeport)
PGDIR="$WORK/pg"; PGDATA="$PGDIR/data"
mkdir -p "$PGDIR"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=haagent demo database CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
  -keyout "$PGDIR/ca.key" -out "$PGDIR/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$PGDIR/server.key" -out "$PGDIR/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$PGDIR/san.ext"
openssl x509 -req -in "$PGDIR/server.csr" -CA "$PGDIR/ca.crt" -CAkey "$PGDIR/ca.key" -CAcreateserial -days 365 \
  -extfile "$PGDIR/san.ext" -out "$PGDIR/server.crt" 2>/dev/null
echo demo-superuser-pw >"$PGDIR/pw"
chown -R postgres "$PGDIR"; chmod 600 "$PGDIR/server.key"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$PGDATA" -U postgres --pwfile "$PGDIR/pw" \
  --auth-local=peer --auth-host=scram-sha-256 --no-instructions >/dev/null
cat >>"$PGDATA/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDIR'
ssl = on
ssl_cert_file = '$PGDIR/server.crt'
ssl_key_file = '$PGDIR/server.key'
fsync = off
CONF
printf 'local all all peer\nhostssl all all 127.0.0.1/32 scram-sha-256\n' >"$PGDATA/pg_hba.conf"
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PGDATA" -l "$PGDIR/log" -w start >/dev/null
psqlc() { runuser -u postgres -- psql -q -h "$PGDIR" -p "$PGPORT" -U postgres "$@"; }
psqlc -c "CREATE ROLE circle LOGIN PASSWORD 'demo-postgres-password'" postgres
for db in vms conductor_production contexts_service_production cron_service_production circle domain federations permissions; do
  psqlc -c "CREATE DATABASE $db OWNER circle" postgres
  psqlc -c 'CREATE EXTENSION "uuid-ossp"' "$db"
done
psqlc -c 'CREATE EXTENSION pgcrypto' circle
cat >"$WORK/s3/circleci-ha/circleconfig/shared/postgresql" <<SH
# PostgreSQL connection settings read by the CircleCI services (the demo's local server).
export POSTGRES_HOST="localhost"
export POSTGRES_PORT="$PGPORT"
export POSTGRES_USER="circle"
export POSTGRES_PASSWORD="demo-postgres-password"
SH

# The installer, kept in the bucket and pinned by sha256 (no public download needed).
cp examples/demo-replicated-install.sh "$WORK/s3/circleci-ha/replicated-install.sh"
INSTALLER_SHA=$(sha256sum examples/demo-replicated-install.sh | cut -d' ' -f1)

# MongoDB wire protocol: FerretDB as replica set rs0, TLS with the demo CA's certificate.
MONGOPORT=$(freeport)
mkdir -p "$WORK/ferretdb"
cp "$PGDIR/server.crt" "$PGDIR/server.key" "$WORK/ferretdb/"
(cd "$WORK/ferretdb" && exec "$BIN/ferretdb" --handler=sqlite --sqlite-url="file:$WORK/ferretdb/" --state-dir="$WORK/ferretdb" \
  --listen-addr= --listen-tls="127.0.0.1:$MONGOPORT" --listen-tls-cert-file="$WORK/ferretdb/server.crt" \
  --listen-tls-key-file="$WORK/ferretdb/server.key" --telemetry=disable --debug-addr=127.0.0.1:0 --test-enable-new-auth --repl-set-name=rs0 \
  --setup-database=admin --setup-username=circle --setup-password=demo-mongo-password >"$WORK/ferretdb.log" 2>&1) &
pids+=($!)
waitport "$MONGOPORT"
# The MongoDB settings go where CircleCI's HA page puts them: the bucket's
# circle-installation-customizations (examples/bucket's, with the demo's FerretDB instead of the
# example hosts). haagent merges the session cookie key line into it on the machine.
{
  echo "# CircleCI's general configuration file, as CircleCI's HA page lays it out (the demo's FerretDB)."
  echo
  echo "MONGO_BASE_URI=mongodb://circle:demo-mongo-password@localhost:$MONGOPORT"
  for v in MAIN:circle_ghe ACTION_LOGS:circle_ghe BUILD_STATE:build_state_dev_ghe CONTAINERS:containers_dev_ghe REMOTE_CONTAINERS:remote_containers_dev_ghe; do
    echo "export CIRCLE_SECRETS_MONGODB_${v%%:*}_URI=\"\$MONGO_BASE_URI/${v#*:}?ssl=true&authSource=admin&replicaSet=rs0\""
  done
} >"$WORK/s3/circleci-ha/circle-installation-customizations"

# Vault: dev server with TLS and its own CA, a transit mount, a policy and a periodic token,
# as the runbook makes them.
VAULTPORT=$(freeport)
mkdir -p "$WORK/vault"
(cd "$WORK/vault" && HOME="$WORK/vault" VAULT_DISABLE_MLOCK=true exec "$BIN/vault" server -dev -dev-root-token-id=demo-root \
  -dev-listen-address="127.0.0.1:$VAULTPORT" -dev-tls -dev-tls-cert-dir="$WORK/vault" -dev-no-store-token >"$WORK/vault.log" 2>&1) &
pids+=($!)
waitport "$VAULTPORT"
for _ in $(seq 1 100); do [ -s "$WORK/vault/vault-ca.pem" ] && break; sleep 0.1; done
vaultc() { VAULT_ADDR="https://127.0.0.1:$VAULTPORT" VAULT_CACERT="$WORK/vault/vault-ca.pem" VAULT_TOKEN=demo-root "$BIN/vault" "$@"; }
for _ in $(seq 1 100); do vaultc status >/dev/null 2>&1 && break; sleep 0.1; done
vaultc secrets enable transit >/dev/null
printf 'path "transit/keys/*" { capabilities = ["create", "read", "update"] }\npath "transit/encrypt/*" { capabilities = ["update"] }\npath "transit/decrypt/*" { capabilities = ["update"] }\n' \
  | vaultc policy write circle-transit - >/dev/null
VAULTTOKEN=$(vaultc token create -policy=circle-transit -period=1h -field=token)
mkdir -p "$WORK/s3/circleci-ha/ca-certificates"
cp "$WORK/vault/vault-ca.pem" "$WORK/s3/circleci-ha/ca-certificates/demo-vault-ca.crt"
cat >"$WORK/s3/circleci-ha/circleconfig/shared/vault" <<SH
# Vault connection settings read by the contexts-service (the demo's dev server).
export VAULT__SCHEME="https"
export VAULT__HOST="127.0.0.1"
export VAULT__PORT="$VAULTPORT"
export VAULT__CLIENT_TOKEN="$VAULTTOKEN"
export VAULT__TRANSIT_MOUNT="transit"
SH

ROOT="$WORK/root"
# The demo database's CA travels in the bucket; the ca-certs step installs it.
mkdir -p "$WORK/s3/circleci-ha/ca-certificates"
cp "$PGDIR/ca.crt" "$WORK/s3/circleci-ha/ca-certificates/demo-db-ca.crt"
mkdir -p "$ROOT/etc/haagent"
cat >"$ROOT/etc/haagent/haagent.yaml" <<YAML
version: 1
source:
  bucket: circleci-ha
  region: us-east-1
  endpoint: http://127.0.0.1:$S3PORT
  path_style: true
replicated:
  installer_url: s3://circleci-ha/replicated-install.sh
  sha256: $INSTALLER_SHA
# The demo's installer starts no CircleCI, so there is no frontend to watch.
watch:
  enabled: false
YAML

export AWS_ACCESS_KEY_ID=demo-access AWS_SECRET_ACCESS_KEY=demo-secret-key
export AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:$IMDSPORT"

echo "== haagent run --once --root $ROOT"
bin/haagent --root "$ROOT" run --once
echo
echo "== haagent status --root $ROOT"
bin/haagent --root "$ROOT" status
echo
echo "== haagent check --root $ROOT (what the probe step saw)"
bin/haagent --root "$ROOT" check || true
echo
echo "== second run (nothing changed in the bucket: nothing is rewritten)"
bin/haagent --root "$ROOT" run --once 2>&1 | grep -E 'files in place|boot complete'
echo
echo "== /etc/circle-installation-customizations on the machine: the bucket's copy and one cookie key line (key and password masked here)"
sed -E 's/(COOKIE_KEY=").*"/\1****************"/; s/(circle:)[^@]*@/\1****@/' "$ROOT/etc/circle-installation-customizations"
echo
echo "== the tree under $ROOT, with modes and numeric owners (gid: the root's etc/group, where docker was created)"
(cd "$ROOT" && find etc/settings.conf etc/replicated.conf etc/license.rli etc/circle-installation-customizations etc/circleconfig \
  data usr/local/share/ca-certificates var/lib/haagent -printf '%M %U:%G %5s  /%p\n' | sort -k4)
