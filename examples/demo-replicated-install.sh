#!/bin/bash
# Stand-in for the Replicated installer in `make demo` (the real one is downloaded from
# get.replicated.com or kept in the bucket, pinned by sha256). It shows what it was given and
# leaves what haagent checks after an exit 0: a replicatedctl that answers
# `app status inspect`. haagent runs it from ROOT/var/lib/haagent/replicated-install.sh, so
# the demo's --root is where it was started from.
set -euo pipefail
root=${0%/var/lib/haagent/replicated-install.sh}
echo "demo installer: would install Replicated with: $*"
mkdir -p "$root/usr/local/bin"
cat >"$root/usr/local/bin/replicatedctl" <<'CTL'
#!/bin/bash
# The demo's replicatedctl: the app as a fresh install reports it, still starting.
[ "$*" = "app status inspect" ] || exit 2
echo '[{"AppID":"demo","Sequence":1,"State":"stopped","DesiredState":"started","IsTransitioning":true}]'
CTL
chmod 0755 "$root/usr/local/bin/replicatedctl"
