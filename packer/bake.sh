#!/usr/bin/env bash
# Runs inside the Packer build instance as root: installs haagent and its unit, raises
# journald's rate limits, optionally installs Docker and pre-pulls images, then checks the image.
set -euo pipefail

install -m 0755 /tmp/haagent /usr/local/bin/haagent
/usr/local/bin/haagent install
install -d -m 0755 /etc/systemd/journald.conf.d
install -m 0644 /tmp/journald-haagent.conf /etc/systemd/journald.conf.d/haagent.conf

if [ "${PREINSTALL_DOCKER:-false}" = "true" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io
  systemctl enable docker
  for image in ${PREPULL_IMAGES:-}; do
    docker pull "$image"
  done
fi

bash /tmp/check-image.sh /
rm -f /tmp/haagent /tmp/journald-haagent.conf /tmp/check-image.sh
