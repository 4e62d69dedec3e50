#!/usr/bin/env bash
# Runs inside the Packer build instance as root: installs haagent and its unit, raises
# journald's rate limits, optionally installs Docker and pre-pulls images, then checks the image.
set -euo pipefail

# Docker, when baked in, is a pinned version held against upgrades: the Replicated installer
# recommends one Docker version per Replicated release and, finding another, asks "Do you want
# to proceed anyway?" and exits 0 having installed nothing (haagent passes no-docker on an
# image with Docker, so the script does not compare, but the version must still be one that
# Replicated release supports). Never "the newest".
if [ "${PREINSTALL_DOCKER:-false}" = "true" ] && [ -z "${DOCKER_VERSION:-}" ]; then
  echo "bake: preinstall_docker needs docker_version, the exact apt version of ${DOCKER_PACKAGE:-docker.io} to install and hold (apt-cache madison ${DOCKER_PACKAGE:-docker.io})" >&2
  exit 1
fi

install -m 0755 /tmp/haagent /usr/local/bin/haagent
/usr/local/bin/haagent install
install -d -m 0755 /etc/systemd/journald.conf.d
install -m 0644 /tmp/journald-haagent.conf /etc/systemd/journald.conf.d/haagent.conf

if [ "${PREINSTALL_DOCKER:-false}" = "true" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --allow-downgrades "${DOCKER_PACKAGE:-docker.io}=${DOCKER_VERSION}"
  apt-mark hold "${DOCKER_PACKAGE:-docker.io}"
  systemctl enable docker
  for image in ${PREPULL_IMAGES:-}; do
    docker pull "$image"
  done
fi

bash /tmp/check-image.sh /
rm -f /tmp/haagent /tmp/journald-haagent.conf /tmp/check-image.sh
