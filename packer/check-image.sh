#!/usr/bin/env bash
# Checks an image root (the AMI build, or the boot test's root): the binary starts, the unit
# is installed and enabled, and no config or secret was baked in.
#   check-image.sh ROOT
set -euo pipefail
root=${1:-/}
fail=0
bad() { echo "check-image: $*" >&2; fail=1; }

"$root/usr/local/bin/haagent" version >/dev/null || bad "the haagent binary does not start"
[ -f "$root/etc/systemd/system/haagent.service" ] || bad "the haagent unit is not installed"
[ -L "$root/etc/systemd/system/multi-user.target.wants/haagent.service" ] || bad "the haagent unit is not enabled"
[ -f "$root/etc/systemd/journald.conf.d/haagent.conf" ] || bad "journald's rate limits are not raised"

# Nothing instance-specific or secret may ship in the image.
for f in /etc/haagent/haagent.yaml /etc/settings.conf /etc/replicated.conf /etc/license.rli \
  /etc/circle-installation-customizations /var/lib/haagent/state.json /var/lib/haagent/replicated-installed.json \
  /var/lib/haagent/frontend-logs.json; do
  [ -e "$root$f" ] && bad "$f is baked into the image; it must come from user-data or S3 at boot"
done
for d in /data/circle/circleci-encryption-keys /etc/circleconfig/shared; do
  if [ -d "$root$d" ] && [ -n "$(ls -A "$root$d")" ]; then
    bad "$d is not empty in the image"
  fi
done
exit "$fail"
