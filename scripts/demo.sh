#!/usr/bin/env bash
# make demo: a whole boot on a local, self-contained setup. Starts versitygw (a real S3 server)
# and the EC2 metadata mock in IMDSv2-only mode on loopback, seeds a bucket from
# examples/bucket/, runs `haagent run --once --root <tmp>` against them, and shows the run and
# the resulting tree with modes.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(scripts/peers.sh bin)
scripts/peers.sh build versitygw imdsmock
mkdir -p bin
go build -o bin/haagent ./cmd/haagent

WORK=$(mktemp -d /tmp/haagent-demo.XXXXXX)
pids=()
cleanup() {
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

ROOT="$WORK/root"
mkdir -p "$ROOT/etc/haagent"
cat >"$ROOT/etc/haagent/haagent.yaml" <<YAML
version: 1
source:
  bucket: circleci-ha
  region: us-east-1
  endpoint: http://127.0.0.1:$S3PORT
  path_style: true
YAML

export AWS_ACCESS_KEY_ID=demo-access AWS_SECRET_ACCESS_KEY=demo-secret-key
export AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:$IMDSPORT"

echo "== haagent run --once --root $ROOT"
bin/haagent --root "$ROOT" run --once
echo
echo "== haagent status --root $ROOT"
bin/haagent --root "$ROOT" status
echo
echo "== second run (nothing changed in the bucket: nothing is rewritten)"
bin/haagent --root "$ROOT" run --once 2>&1 | grep -E 'files in place|boot complete'
echo
echo "== the tree under $ROOT, with modes"
(cd "$ROOT" && find etc data var -printf '%M %4s  /%p\n' | sort -k3)
